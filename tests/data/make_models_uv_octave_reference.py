"""Regenerate ``models_uv_octave_reference.npz`` (needs GNU Octave on PATH: apt-get install octave).

Made-up inputs only (no BFM data): a noisy 72-vertex ``face_disc`` from ``tests/test_models_uv.py``,
its ``tutte_embedding`` UV, random PCs and expression displacements. The Octave script below is a
transcription of the original ``prepareExpressionBFM.m`` + ``resampleModel.m`` +
``util/LaplaceBeltrami.m`` (3DMMasSTN) with generalised sizes. Used by
``tests/test_models_prepare.py::test_prepare_matches_octave_transcription``.

Run from the repository root: ``python tests/data/make_models_uv_octave_reference.py``.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import scipy.io as sio

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_models_uv import face_disc  # noqa: E402

from jface.models.tutte import mirror_map, tutte_embedding  # noqa: E402

OCTAVE_SCRIPT = r"""% Octave transcription of 3DMMasSTN prepareModel/prepareExpressionBFM.m + resampleModel.m +
% util/LaplaceBeltrami.m (3DMMasSTN), generalised from the BFM's fixed
% sizes (53490 / 53215 / 112) to the sizes of the input. MATLAB's triangulation/pointLocation
% is replaced by Octave's tsearch plus explicit barycentric coordinates.
1;
function Delta = laplace_beltrami_orig(X, F)
  n = size(X,2); m = size(F,2);
  XF = @(i) X(:,F(i,:));
  Na = cross(XF(2)-XF(1), XF(3)-XF(1));
  amplitude = @(X) sqrt(sum(X.^2));
  A = amplitude(Na)/2;
  N = Na ./ repmat(amplitude(Na), [3 1]);
  I = []; J = []; V = [];
  for i=1:3
    s = mod(i,3)+1; t = mod(i+1,3)+1;
    wi = cross(XF(t)-XF(s), N);
    I = [I, 1:m]; J = [J, F(i,:)]; V = [V, wi];
  end
  dA = spdiags(1./(2*A(:)), 0, m, m);
  G = {};
  for k=1:3
    G{k} = dA*sparse(I, J, V(k,:), m, n);
  end
  dAf = spdiags(2*A(:), 0, m, m);
  Delta = G{1}'*dAf*G{1} + G{2}'*dAf*G{2} + G{3}'*dAf*G{3};
end

load('in.mat');
N = numel(shapeMU)/3; M = numel(map0); res = double(res);
mp = double(map0) + 1;
PC = zeros(3*N, nshape+nexp);
for i=1:nshape
  PC(:,i) = shapePC(:,i).*shapeEV(i);
end
vertices = reshape(shapeMU, 3, N)';
L = laplace_beltrami_orig(vertices', tl');
S = sparse(1:M, mp, ones(M,1), M, N);
for i=1:nexp
  expression = ([L; S]\[L*vertices; S*vertices + reshape(w_exp(:,i),3,M)']) - vertices;
  expression = expression';
  PC(:,nshape+i) = expression(:);
end
% resampleModel
[gridx, gridy] = meshgrid(0:1/(res-1):1, 0:1/(res-1):1);
gridx = gridx'; gridy = flipud(gridy)';
UV(UV(:,1)==0,1) = -eps; UV(UV(:,1)==1,1) = 1+eps;
UV(UV(:,2)==0,2) = -eps; UV(UV(:,2)==1,2) = 1+eps;
if mod(res,2) ~= 0
  UV(UV(:,1)==0.5,1) = 0.5+eps;
end
P = [gridx(:) gridy(:)];
TI = tsearch(UV(:,1), UV(:,2), tl, P(:,1), P(:,2));
A = UV(tl(TI,1),:); B = UV(tl(TI,2),:); C = UV(tl(TI,3),:);
dt = (B(:,1)-A(:,1)).*(C(:,2)-A(:,2)) - (B(:,2)-A(:,2)).*(C(:,1)-A(:,1));
l2 = ((P(:,1)-A(:,1)).*(C(:,2)-A(:,2)) - (P(:,2)-A(:,2)).*(C(:,1)-A(:,1)))./dt;
l3 = ((B(:,1)-A(:,1)).*(P(:,2)-A(:,2)) - (B(:,2)-A(:,2)).*(P(:,1)-A(:,1)))./dt;
BC = [1-l2-l3, l2, l3];
newverts = zeros(res*res, 3);
for d=1:3
  newverts(:,d) = vertices(tl(TI,1),d).*BC(:,1)+vertices(tl(TI,2),d).*BC(:,2)+vertices(tl(TI,3),d).*BC(:,3);
end
count = 0; newfaces = zeros(2*(res-1)^2, 3);
for i=1:res-1
  for j=1:res-1
    count = count+1;
    newfaces(count,1)=sub2ind([res res],i,j);
    newfaces(count,3)=sub2ind([res res],i,j+1);
    newfaces(count,2)=sub2ind([res res],i+1,j);
    count = count+1;
    newfaces(count,1)=sub2ind([res res],i+1,j+1);
    newfaces(count,2)=sub2ind([res res],i,j+1);
    newfaces(count,3)=sub2ind([res res],i+1,j);
  end
end
newPC = zeros(3*res*res, size(PC,2));
for dim=1:size(PC,2)
  Q = reshape(PC(:,dim),3,N)';
  PCnew = zeros(res*res,3);
  for d=1:3
    PCnew(:,d) = Q(tl(TI,1),d).*BC(:,1)+Q(tl(TI,2),d).*BC(:,2)+Q(tl(TI,3),d).*BC(:,3);
  end
  newPC(:,dim) = reshape(PCnew',3*res*res,1);
end
out_shapeMU = reshape(newverts',res*res*3,1)./1000;
out_shapePC = newPC./1000;
out_faces = newfaces;
out_L = full(L);
out_PC = PC;
out_TI = TI;
out_BC = BC;
save('-mat-binary', 'out.mat', 'out_shapeMU', 'out_shapePC', 'out_faces', 'out_L', 'out_PC', 'out_TI', 'out_BC');
"""


def main():
    verts, faces = face_disc(cols=9, rows=8)
    mirror = mirror_map(verts)
    rng = np.random.default_rng(20261121)
    verts_noisy = verts + 0.02 * rng.normal(size=verts.shape)
    uv = tutte_embedding(verts_noisy, faces, mirror=mirror)
    n = len(verts)
    mean_um = verts_noisy * 8e4
    shape_basis = rng.normal(size=(n, 3, 3))
    shape_ev = np.array([3e3, 2e3, 1e3])
    mapping = np.setdiff1d(np.arange(n), [30, 31, 39, 40])
    w_exp = rng.normal(size=(len(mapping), 3, 2)) * 1e3
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "reference.m").write_text(OCTAVE_SCRIPT)
        for res in (9, 8):
            sio.savemat(Path(tmp) / "in.mat", dict(
                shapeMU=mean_um.reshape(-1, 1), shapePC=shape_basis.reshape(3 * n, -1),
                shapeEV=shape_ev.reshape(-1, 1), tl=(faces + 1).astype(float),
                w_exp=w_exp.reshape(3 * len(mapping), -1),
                map0=mapping.astype(np.uint16)[None], UV=uv, res=float(res), nshape=3.0,
                nexp=2.0), format="5")
            subprocess.run(["octave", "--no-gui", "--quiet", "reference.m"], cwd=tmp, check=False)
            o = sio.loadmat(Path(tmp) / "out.mat")
            for k in ("shapeMU", "shapePC", "faces", "L", "PC", "TI", "BC"):
                out[f"res{res}_{k}"] = o[f"out_{k}"]
    version = subprocess.run(["octave", "--version"], capture_output=True,
                             text=True).stdout.splitlines()[0]
    np.savez_compressed(
        Path(__file__).parent / "models_uv_octave_reference.npz",
        mean_um=mean_um, shape_basis=shape_basis, shape_ev=shape_ev,
        faces=faces.astype(np.int32), uv=uv, map_tddfa_to_basel=mapping.astype(np.int64),
        w_exp=w_exp, mirror=mirror, octave_version=np.array(version),
        octave_script=np.array(OCTAVE_SCRIPT), **out)


if __name__ == "__main__":
    main()
