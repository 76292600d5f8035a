"""README.md's commands, as written, parse and run.

Every command line of the README's ```bash / ```python blocks (continuation lines joined, ``&&``
chains split, comments dropped) matches exactly one rule of :data:`RULES`, which says how it is
checked:

* ``run``: executed in this process as ``python -m MODULE ARGS`` would run it (the module's
  ``main(argv)``), in a temporary folder where the README's file names are links to the stand-ins of
  ``../shared/realdata`` (``$JFACE_SHARED``; :data:`STAND_INS`: BFM 2009 -> ``synth_01_MorphableModel.mat``
  ...) and ``photos/`` holds scikit-image's astronaut with a 68-point side file; the rule's tiny
  overrides are appended (argparse and the trainers' overrides: the last value wins), e.g.
  ``--max-steps 30`` so the demo's fit stops early. A rule may need an earlier README command's
  output (``needs``), which is run first.
* ``elsewhere``: trains for minutes as written; the named test runs exactly this README line, with
  ``--preset tiny`` appended, on a tiny run it makes anyway (through :func:`readme_commands` and
  :func:`run_command`).
* ``parse``: needs what only a user has (released DECA weights, AFLW2000-3D, 300W-LP, a folder of
  their photographs) or several GPUs; its arguments go through the program's own parser, nothing runs.
* ``skip``: pip, and the test suite itself.

A README command without a rule fails :func:`test_every_command_has_one_rule`: add one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import os
import re
import runpy
import shlex
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import REALDATA

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

#: README file names -> stand-ins under ../shared/realdata (same layouts; see its README.md).
STAND_INS = {
    "01_MorphableModel.mat": "synthetic_bfm/synth_01_MorphableModel.mat",
    "Model_Expression.mat": "synthetic_bfm/synth_Model_Expression.mat",
    "BFM_UV.mat": "3dmmasstn/BFM_UV.mat",
    "map_tddfa_to_basel.mat": "3dmmasstn/map_tddfa_to_basel.mat",
    "Landmarks21_112.anl": "3dmmasstn/landmarks/Landmarks21_112.anl",
    "Landmarks68_112.anl": "3dmmasstn/landmarks/Landmarks68_112.anl",
    "demodata.mat": "3dmmasstn/demodata.mat",
    "generic_model.pkl": "synthetic_flame/synthetic_flame_model.npz",  # FLAME's field names, npz inside
    "landmark_embedding.npy": "deca/landmark_embedding.npy",
}


@dataclasses.dataclass(frozen=True)
class Rule:
    pattern: str  # a regex matched (search) against the command line
    how: str  # "run", "elsewhere", "parse" or "skip"
    why: str = ""
    extra: tuple = ()  # appended to the command's arguments when it runs
    needs: str = ""  # a pattern of the README command whose output this one reads
    realdata: bool = False  # runs on the stand-ins (skipped without ../shared/realdata)


RULES = [
    Rule(r"^(python -m )?pip install", "skip", "installs jface; the test environment has it"),
    Rule(r"^python -m pytest", "skip", "the test suite itself"),
    # the trainers: minutes as written; their tests run these lines with --preset tiny appended
    Rule(r"^python -m train\.stn( --preset default)?$", "elsewhere",
         "tests/test_train_stn.py::test_readme_train_stn_commands"),
    Rule(r"^python -m train\.stn --eval runs/stn$", "elsewhere",
         "tests/test_train_stn.py::test_readme_train_stn_commands"),
    Rule(r"^python -m train\.stn --workdir runs/no_body --ablate body$", "parse",
         "a default-preset run (minutes); the ablation: tests/test_data_synthetic_photo.py"),
    Rule(r"^python -m train\.deca( --preset default)?$", "elsewhere",
         "tests/test_train_deca.py::test_tiny_run_trains_all_stages_and_prints_metrics"),
    Rule(r"^python -m train\.deca --workdir runs/deca_plain --look plain$", "parse",
         "a default-preset run (minutes); the looks and ablations: tests/test_data_synthetic_deca_photo.py"),
    Rule(r"^python -m train\.(stn|deca) +--(data photos/|eval runs/\w+_photos)", "parse",
         "the user's photo folder and runs on it; tests/test_train_data.py trains and evaluates on a real "
         "photo folder the same way"),
    Rule(r"^python -m jface\.data build photos photos/", "parse",
         "the user's photo folder (and mediapipe); tests/test_data_*.py build photo folders with side files"),
    # 3DMM-STN
    Rule(r"^python -m jface\.stn\.demo -o out/demo$", "run", extra=("--max-steps", "30", "--batch", "2")),
    Rule(r"^python -m jface\.stn\.demo --data demodata\.mat --model stn_model\.npz", "run",
         extra=("--max-steps", "30"), needs=r"^python -m jface\.models prepare-stn", realdata=True),
    Rule(r"^python -m jface\.flatten photos/ --fit-landmarks", "run"),
    Rule(r"^python -m jface\.demos\.astronaut", "run", extra=("--steps", "20", "--no-detector")),
    Rule(r"^python -m jface\.demos\.real_photos --stn runs/stn", "parse",
         "a trained run and mediapipe; tests/test_demos_real_photos.py runs it on a tiny run"),
    Rule(r"^python -m jface\.demos\.real_photos --deca runs/deca --photos", "parse",
         "a trained DECA run and the user's photos; tests/test_demos_real_photos.py runs --photos' faces"),
    # DECA
    Rule(r"^python -m jface\.reconstruct photos/ --weights deca\.npz", "parse",
         "DECA's released weights (a user download); tests/test_tools_reconstruct.py runs reconstruct"),
    Rule(r"^python -m jface\.reconstruct photos/ --detector --fit", "parse",
         "a photometric fit at 224 px compiles and runs for minutes on 2 CPU cores; "
         "tests/test_tools_reconstruct.py runs --fit on small photos"),
    Rule(r"^python -m jface\.reconstruct\.video clip\.mp4", "parse",
         "the user's video; tests/test_fit_video.py tracks a rendered frame folder"),
    Rule(r"^python -m jface\.weights convert deca deca_model\.tar", "parse",
         "DECA's deca_model.tar (a user download); tests/test_weights.py converts a synthetic archive"),
    Rule(r"^python -m jface\.render demo", "parse",
         "renders the default head's stages (~45 s of CPU even at --size 64); tests/test_render_*.py render "
         "each stage"),
    # data and models
    Rule(r"^python -m jface\.data (build synthetic|inspect)", "parse",
         "generates and renders 1000 faces (minutes); tests/test_data_synthetic.py builds and inspects a small "
         "set through the same main()"),
    Rule(r"^python -m jface\.data build (aflw2000|300w_lp) ", "parse",
         "the AFLW2000-3D / 300W-LP downloads; tests/test_data_*.py build small stand-ins"),
    Rule(r"^python -m jface\.models show default-flame", "run"),
    Rule(r"^python -m jface\.models prepare-stn", "run", realdata=True),
    Rule(r"^python -m jface\.models convert generic_model\.pkl", "run", realdata=True),
    Rule(r"^python -m jface\.models info flame\.npz", "run", needs=r"^python -m jface\.models convert",
         realdata=True),
    # benchmarks: minutes on a GPU (several for scaling); tests/test_bench.py runs small ones
    Rule(r"^python -m jface\.bench (all|scaling|deca|trace)\b", "parse", "a device benchmark (GPUs, minutes)"),
    Rule(r"^python -m jface\.bench render ", "parse",
         "a GPU benchmark (~40 s of CPU even at batch 1, 32 px); tests/test_bench.py runs its table mode on a "
         "tiny OBJ"),
    Rule(r"^python -m jface\.bench bombs", "parse", "builds and loads hostile files for minutes; "
         "tests/test_files_bombs.py loads each under a memory limit"),
]


# --- the README's commands ---------------------------------------------------------------------------

def readme_commands(text: str | None = None) -> list:
    """Every command of the README's ```bash / ```python blocks, in order: continuation lines joined,
    ``&&`` chains split, comments and blank lines dropped."""
    text = README.read_text() if text is None else text
    commands = []
    for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
        if lang not in ("bash", "sh", "shell", "python"):
            continue
        if lang == "python":
            commands.append("python -c " + shlex.quote(body))
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            line = re.sub(r"\s+", " ", re.sub(r"\s+#\s.*$", "", line))  # a trailing comment
            commands += [part.strip() for part in line.split(" && ")]
    return commands


def rule_of(command: str) -> Rule:
    matches = [r for r in RULES if re.search(r.pattern, command)]
    if len(matches) != 1:
        raise AssertionError(f"README command {command!r} matches {len(matches)} rules of tests/test_readme.py "
                             f"(expected exactly one): {[r.pattern for r in matches]}")
    return matches[0]


def _argv(command: str) -> tuple:
    """``(kind, target, args)``: ("module", "jface.flatten", [...]) or ("code", "print(1)", [])."""
    tokens = [os.path.expanduser(os.path.expandvars(t)) for t in shlex.split(command)]
    if tokens[:2] == ["python", "-m"]:
        return "module", tokens[2], tokens[3:]
    if tokens[:2] == ["python", "-c"]:
        return "code", tokens[2], []
    raise AssertionError(f"README command {command!r}: expected python -m MODULE or python -c CODE")


def _run_module(module: str, args) -> int:
    """``python -m module args`` in this process (runpy, as ``-m`` does); its exit status."""
    saved = sys.argv
    sys.argv = [module, *args]
    try:
        with warnings.catch_warnings():  # runpy warns when the package's __main__ was imported before
            warnings.simplefilter("ignore", RuntimeWarning)
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if isinstance(stop.code, int) or stop.code is None:
            return stop.code or 0
        print(stop.code, file=sys.stderr)  # what the interpreter prints for sys.exit("message")
        return 1
    finally:
        sys.argv = saved
    return 0


def run_command(command: str, extra=()) -> int:
    """Run a README command (with ``extra`` arguments appended) in this process; its exit status."""
    kind, target, args = _argv(command)
    if kind == "code":
        exec(compile(target, "<README>", "exec"), {"__name__": "__main__"})
        return 0
    return _run_module(target, [*args, *extra])


class _Parsed(Exception):
    pass


@contextlib.contextmanager
def _stop_after_parsing():
    """argparse parses as usual (errors exit 2), then :class:`_Parsed` stops the program."""
    depth = [0]
    originals = {name: getattr(argparse.ArgumentParser, name) for name in ("parse_args", "parse_known_args")}

    def wrap(name):
        def patched(self, *args, **kwargs):
            depth[0] += 1
            try:
                result = originals[name](self, *args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                raise _Parsed(result)
            return result
        return patched

    for name in originals:
        setattr(argparse.ArgumentParser, name, wrap(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(argparse.ArgumentParser, name, original)


def parse_command(command: str) -> None:
    """Parse a README command's arguments with its program's parser, running nothing."""
    kind, target, args = _argv(command)
    if kind == "code":
        compile(target, "<README>", "exec")
        return
    if target in ("train.stn", "train.deca"):  # preset and every --key value override, validated
        importlib.import_module(target).parse_args(args)
        return
    with _stop_after_parsing():
        try:
            code = _run_module(target, args)
        except _Parsed:
            return
    raise AssertionError(f"{command!r}: the program ended ({code}) without parsing its arguments")


# --- the workspace: a temporary folder with the README's file names ----------------------------------

def _photos(folder: Path) -> None:
    """``photos/astronaut/astronaut.png`` (scikit-image) with a 68-point side file (the hand-placed
    :data:`jface.demos.astronaut.ASTRONAUT_LANDMARKS68`)."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    from jface.demos.astronaut import ASTRONAUT_LANDMARKS68

    (folder / "astronaut").mkdir(parents=True, exist_ok=True)
    Image.fromarray(skimage_data.astronaut()).save(folder / "astronaut" / "astronaut.png")
    np.savetxt(folder / "astronaut" / "astronaut.txt", ASTRONAUT_LANDMARKS68)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The folder README commands run in (their relative paths land here)."""
    root = tmp_path_factory.mktemp("readme")
    if REALDATA.is_dir():
        for name, target in STAND_INS.items():
            (root / name).symlink_to(REALDATA / target)
    _photos(root / "photos")
    return root


@pytest.fixture()
def in_workspace(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("HOME", str(workspace / "home"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(workspace / "tfds"))
    monkeypatch.setenv("JFACE_COMPILATION_CACHE", "0")  # the programs would switch it on for this process
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)  # as a user runs them (the suite runs in float64)
    yield workspace
    jax.config.update("jax_enable_x64", previous)


_DONE: dict = {}  # command -> its stdout, once run in this process's workspace


def _run_rule(command: str, rule: Rule, capsys) -> str:
    """Run ``command`` (and first the command it needs) once per workspace; its stdout."""
    if command in _DONE:
        return _DONE[command]
    if rule.needs:
        needed = [c for c in readme_commands() if re.search(rule.needs, c)]
        assert needed, f"{command!r} needs a README command matching {rule.needs!r}; there is none"
        _run_rule(needed[0], rule_of(needed[0]), capsys)
    code = run_command(command, rule.extra)
    out, err = capsys.readouterr()
    assert code == 0, f"{command!r} {' '.join(rule.extra)} exited {code}:\n{out[-2000:]}\n{err[-2000:]}"
    _DONE[command] = out
    return out


COMMANDS = readme_commands()


def test_every_command_has_one_rule():
    assert len(COMMANDS) >= 20
    for command in COMMANDS:
        rule_of(command)


def test_reading_the_readme_blocks():
    text = "x\n```bash\n# c\npython -m a --x 1 \\\n    --y 2   # why\npip install b && python -m c\n```\n" \
           "```python\nprint(1)\n```\n```text\nnot a command\n```\n"
    assert readme_commands(text) == ["python -m a --x 1 --y 2", "pip install b", "python -m c",
                                     "python -c 'print(1)\n'"]


@pytest.mark.parametrize("command", [c for c in COMMANDS if rule_of(c).how != "skip"])
def test_command_parses(command, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    parse_command(command)


# commands another one needs run first (so its test, not the other's, pays for it)
RUN = sorted((c for c in COMMANDS if rule_of(c).how == "run"),
             key=lambda c: not any(re.search(rule_of(o).needs, c) for o in COMMANDS if rule_of(o).needs))


@pytest.mark.parametrize("command", RUN)
def test_command_runs(command, in_workspace, capsys):
    rule = rule_of(command)
    if rule.realdata and not REALDATA.is_dir():
        pytest.skip(f"real-layout stand-ins not found at {REALDATA}: set JFACE_SHARED to the folder that holds "
                    f"realdata/")
    out = _run_rule(command, rule, capsys)
    if "prepare-stn" in command:  # the real-model path: the landmark sets the demo needs are in the model
        assert "landmark sets in stn_model.npz: aflw21 (21 points)" in out, out
    if "--data demodata.mat" in command:
        assert "wrote 6 panel images to out/demo_real" in out, out


def test_demo_lines_write_to_different_folders():
    outs = [re.search(r"-o (\S+)", c).group(1) for c in COMMANDS if c.startswith("python -m jface.stn.demo")]
    assert len(outs) == len(set(outs)) >= 2, outs


@pytest.mark.skipif(not REALDATA.is_dir(), reason="needs ../shared/realdata (set JFACE_SHARED)")
def test_model_without_landmarks_says_how_to_add_them(in_workspace, capsys, tmp_path):
    """A model prepared without --landmarks: stn.demo refuses in one sentence naming the command that
    adds the set; that command, as printed (the .anl name resolved here), makes the demo run."""
    from jface.models import load_model, save_model

    prepare = next(c for c in COMMANDS if "prepare-stn" in c)
    _run_rule(prepare, rule_of(prepare), capsys)
    bare = tmp_path / "bare.npz"
    save_model(load_model(in_workspace / "stn_model.npz").replace(landmarks={}), bare)
    demo = ["--data", "demodata.mat", "--model", str(bare), "-o", str(tmp_path / "demo"), "--max-steps", "5"]
    assert run_command("python -m jface.stn.demo", demo) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no landmark set 'aflw21'" in err, err
    fix = re.search(r"add it with: (python -m jface\.models add-landmarks \S+ --landmarks \S+)", err).group(1)
    assert run_command(fix) == 0
    assert "landmark sets in" in capsys.readouterr().out
    assert run_command("python -m jface.stn.demo", demo) == 0
    assert "wrote 6 panel images" in capsys.readouterr().out
