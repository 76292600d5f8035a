"""``python -m jface.weights convert KIND SRC -o DST`` (see :mod:`jface.weights`)."""

from __future__ import annotations

import sys

from jface import cli
from jface.deca import weights as deca_weights
from jface.errors import ModelFileError
from jface.files.weights import flatten_tree, save_variables
from jface.stn import localiser

KINDS = ("deca", "vggface2", "vgg19", "vggface-matconvnet")


def _convert(kind: str, src: str, dst: str) -> str:
    if kind == "deca":
        tree = deca_weights.convert_deca(src)
    elif kind == "vggface2":
        tree = deca_weights.convert_vggface2(src)
    elif kind == "vgg19":
        tree = deca_weights.convert_vgg19(src)
    elif kind == "vggface-matconvnet":
        # 3DMM-STN's localiser owns its MatConvNet layout and writes the file itself.
        fn = getattr(localiser, "convert_matconvnet", None)
        if fn is None:
            raise SystemExit(
                "vggface-matconvnet: jface.stn.localiser.convert_matconvnet is not available in "
                "this version"
            )
        result = fn(src, dst)
        return f"converted {src} -> {dst} ({kind})" if result is None else str(result)
    else:  # argparse restricts choices; kept for callers of main()
        raise SystemExit(f"unknown KIND {kind!r}; expected one of {KINDS}")
    save_variables(dst, tree, kind=kind, source=src)
    leaves = flatten_tree(tree)
    n = sum(v.size for v in leaves.values())
    return f"converted {src} -> {dst} ({kind}: {len(leaves)} arrays, {n} values)"


def main(argv=None) -> int:
    """The command line; a bad or refused file, an unknown flag or an output path that cannot be
    written is one line on stderr and exit status 2."""
    parser = cli.ArgumentParser(prog="python -m jface.weights", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="convert released weights to the project's .npz weight format")
    p.add_argument("kind", choices=KINDS)
    p.add_argument(
        "src", help="source file (deca_model.tar, resnet50_ft_weight.pkl, vgg19 .pth, vgg-face.mat)"
    )
    p.add_argument("-o", "--output", required=True, help="destination .npz")
    args = parser.parse_args(argv)

    def body():
        cli.check_output_file(args.output, "-o")
        print(_convert(args.kind, args.src, args.output))

    return cli.run("python -m jface.weights", body, (ModelFileError,))


if __name__ == "__main__":
    sys.exit(main())
