#!/usr/bin/env bash
# Builds the release artifacts as users get them, into dist/: the abi3 wheel for
# manylinux2014 (glibc 2.17; linked by zig, stripped) and the sdist (the wheel is built
# from it, so the sdist is proven to build). Then checks the wheel: auditwheel's
# platform tag, the metadata (PEP 639 licence, version from Cargo.toml), the LICENSE
# files, a stripped extension, the bundled SQLite's compile options.
# The build tools are pinned and live in .venv-build. tests/run_all.sh calls this and
# tests the wheel it leaves; run alone, it only builds and checks.
set -euo pipefail
cd "$(dirname "$0")/.."

MATURIN_VERSION=1.16.0   # also pinned in pyproject.toml [build-system]
ZIG_VERSION=0.17.1
AUDITWHEEL_VERSION=6.8.2

grep -q "\"maturin==$MATURIN_VERSION\"" pyproject.toml ||
    { echo "build_wheels.sh pins maturin $MATURIN_VERSION but pyproject.toml [build-system] does not" >&2; exit 1; }

python3 -m venv .venv-build
.venv-build/bin/python -m pip install --quiet --disable-pip-version-check \
    "maturin==$MATURIN_VERSION" "ziglang==$ZIG_VERSION" "auditwheel==$AUDITWHEEL_VERSION"

echo "== Release build: maturin $MATURIN_VERSION, zig $ZIG_VERSION, manylinux2014, abi3, stripped, + sdist"
rm -rf dist
# maturin finds zig as `python -m ziglang` of the interpreter on PATH.
PATH="$PWD/.venv-build/bin:$PATH" .venv-build/bin/maturin build --release --locked --zig \
    --compatibility manylinux2014 --strip --sdist -i .venv-build/bin/python -o dist

wheels=(dist/*.whl)
sdists=(dist/*.tar.gz)
[ ${#wheels[@]} -eq 1 ] && [ ${#sdists[@]} -eq 1 ] || { echo "expected one wheel and one sdist in dist/" >&2; ls dist >&2; exit 1; }

echo "== auditwheel show ${wheels[0]}"
.venv-build/bin/auditwheel show "${wheels[0]}" | tee dist/auditwheel.txt
grep -q '"manylinux_2_17_x86_64"' dist/auditwheel.txt ||
    { echo "the wheel is not manylinux_2_17 (manylinux2014)" >&2; exit 1; }

echo "== Wheel and sdist contents"
.venv-build/bin/python - "${wheels[0]}" "${sdists[0]}" <<'PY'
import re, subprocess, sys, tarfile, tempfile, tomllib, zipfile, pathlib

wheel, sdist = sys.argv[1], sys.argv[2]
version = tomllib.load(open("Cargo.toml", "rb"))["package"]["version"]
problems = []
name = pathlib.Path(wheel).name
if not re.fullmatch(rf"consensus_db-{re.escape(version)}-cp310-abi3-manylinux2014_x86_64\.manylinux_2_17_x86_64\.whl", name):
    problems.append(f"wheel name {name}: want version {version}, cp310-abi3, manylinux2014 / manylinux_2_17")
z = zipfile.ZipFile(wheel)
names = z.namelist()
meta = z.read(f"consensus_db-{version}.dist-info/METADATA").decode()
for line in ("Metadata-Version: 2.4", "License-Expression: MIT", "License-File: LICENSE", f"Version: {version}",
             "Author: consensus-db developers", "Project-URL: Source, "):
    if not any(l.startswith(line) for l in meta.splitlines()):
        problems.append(f"METADATA lacks {line!r}")
if f"consensus_db-{version}.dist-info/licenses/LICENSE" not in names:
    problems.append("the wheel ships no dist-info/licenses/LICENSE")
for must in ("consensus_db/_core.abi3.so", "consensus_db/py.typed", "consensus_db/_core.pyi"):
    if must not in names:
        problems.append(f"the wheel lacks {must}")
with tempfile.TemporaryDirectory() as tmp:
    so = z.extract("consensus_db/_core.abi3.so", tmp)
    sections = subprocess.run(["readelf", "-S", "-W", so], capture_output=True, text=True, check=True).stdout
    if ".symtab" in sections or ".debug_info" in sections:
        problems.append("the extension is not stripped (.symtab / .debug_info present)")
    size = pathlib.Path(so).stat().st_size
with tarfile.open(sdist) as t:
    members = {m.split("/", 1)[1] for m in t.getnames() if "/" in m}
for must in ("LICENSE", "Cargo.toml", "Cargo.lock", "pyproject.toml", ".cargo/config.toml", "src/lib.rs"):
    if must not in members:
        problems.append(f"the sdist lacks {must}")
if problems:
    sys.exit("\n".join(problems))
print(f"{name}: METADATA 2.4, License-Expression MIT, LICENSE in dist-info/licenses and the sdist, "
      f"stripped extension ({size / 1e6:.1f} MB), version {version} from Cargo.toml")
PY
