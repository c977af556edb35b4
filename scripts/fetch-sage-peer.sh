#!/usr/bin/env bash
# Fetches thu-ml SageAttention's Triton implementation (INT8 QK, FP16 PV attention kernels and the
# Triton quantization kernels they call; python files and the license only) into
# .device/peers/sageattention (git-ignored), where bench/peers/sageattn_bench.py finds it on the GPU
# machine, which has Triton but no internet. The code is only read there for peer timings; it is
# never part of this repository.
#
# Default source: the pure-Triton sageattention 1.0.6 from PyPI, pinned by hash. With --git DIR it
# takes SageAttention 2's python package (sageattn_qk_int8_pv_fp16_triton) from a clone or mirror
# of github.com/thu-ml/SageAttention instead; that is also the fallback when PyPI is unreachable
# and a mirror is found ($SAGEATTENTION_GIT_DIR, else ../.mirror/thu-ml+SageAttention/repo).
# Running it again keeps what is there unless --force is given or a different --git/--rev is asked.
# The two differ little in speed; 1.0.6's non-causal kernel leaves keys past kv_len unmasked when
# kv_len % 64 != 0 (wrong output there), which version 2 fixed.
#
# Usage: scripts/fetch-sage-peer.sh [--git DIR [--rev REV]] [--force] [DEST]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=1.0.6
# PyPI's sha256 of sageattention-1.0.6-py3-none-any.whl and of sageattention-1.0.6.tar.gz.
hashes=(fafc66569bed62a16839e820c2612141b5a20accf55b876d941bab9c0ac5d888
  b0398a5877222ee1abaeccd27d1029309c8b57994794a11c1278e0bfd176512c)

git_dir=""
rev=HEAD
force=0
dest=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --git) git_dir=${2:?--git needs a directory}; shift 2 ;;
    --rev) rev=${2:?--rev needs a revision}; shift 2 ;;
    --force) force=1; shift ;;
    -h | --help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) dest=$1; shift ;;
  esac
done
dest=${dest:-${SAGELLM_SAGEATTENTION_DIR:-$root/.device/peers/sageattention}}

git_source() {  # the SOURCE line that a copy from git_dir at rev would have
  local commit
  commit=$(git -C "$1" rev-parse --verify --quiet "$rev^{commit}") ||
    { echo "error: $1 is not a git repository with revision $rev" >&2; return 1; }
  echo "git github.com/thu-ml/SageAttention $commit"
}

wanted=""
if [[ -n $git_dir ]]; then wanted=$(git_source "$git_dir"); fi
if [[ $force -eq 0 && -f $dest/SOURCE && -f $dest/sageattention/__init__.py ]]; then
  have=$(head -n 1 "$dest/SOURCE")
  if [[ -z $wanted || $wanted == "$have" ]]; then
    echo "SageAttention peer already in $dest ($have)"
    exit 0
  fi
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/out"

from_pypi() {
  local req=$tmp/requirements.txt
  printf 'sageattention==%s' "$version" >"$req"
  printf ' --hash=sha256:%s' "${hashes[@]}" >>"$req"
  echo >>"$req"
  python3 -m pip download --quiet --no-deps --require-hashes -r "$req" -d "$tmp/dl" || return 1
  # Only the package's python files and the license leave the archive (wheel or sdist).
  python3 - "$tmp/dl" "$tmp/out" <<'EOF' || return 1
import os, re, sys, tarfile, zipfile
src, out = sys.argv[1], sys.argv[2]
(name,) = os.listdir(src)
path = os.path.join(src, name)
if name.endswith(".whl"):
    arc = zipfile.ZipFile(path)
    members = [(m, lambda m=m: arc.read(m)) for m in arc.namelist()]
else:
    arc = tarfile.open(path)
    members = [(m.name, lambda m=m: arc.extractfile(m).read()) for m in arc.getmembers()
               if m.isfile()]
kept = 0
for member, read in members:
    m = re.search(r"(?:^|/)(sageattention/(?:[A-Za-z0-9_]+/)*[A-Za-z0-9_]+\.py)$", member)
    target = m.group(1) if m else ("LICENSE" if re.search(r"(^|/)LICENSE$", member) else None)
    if target is None or ".." in target:
        continue
    os.makedirs(os.path.join(out, os.path.dirname(target)), exist_ok=True)
    with open(os.path.join(out, target), "wb") as f:
        f.write(read())
    kept += 1
if not os.path.isfile(os.path.join(out, "sageattention", "core.py")):
    sys.exit(f"error: {name} has no sageattention/core.py")
print(f"unpacked {kept} files from {name}")
EOF
  echo "pypi sageattention==$version ($(ls "$tmp/dl"))" >"$tmp/out/SOURCE"
}

from_git() {
  local dir=$1 line
  line=$(git_source "$dir") || return 1
  # The Triton path of SageAttention 2: core.py imports quant.py (whose CUDA extension the bench
  # stubs out, since the Triton path never calls it); the CUDA kernels and their builders stay.
  # A mirror may lack large blobs elsewhere in the tree (images), which git reports but which
  # do not matter here: its messages are shown only when the archive fails.
  git -C "$dir" archive --format=tar "${line##* }" -- LICENSE sageattention/__init__.py \
    sageattention/core.py sageattention/quant.py sageattention/triton 2>"$tmp/git.err" |
    tar -x -C "$tmp/out" || { cat "$tmp/git.err" >&2; return 1; }
  find "$tmp/out" -type f ! -name '*.py' ! -name LICENSE -delete
  echo "$line" >"$tmp/out/SOURCE"
}

if [[ -n $git_dir ]]; then
  from_git "$git_dir"
elif ! from_pypi; then
  mirror=${SAGEATTENTION_GIT_DIR:-$root/../.mirror/thu-ml+SageAttention/repo}
  echo "warning: sageattention==$version not fetched from PyPI; trying the git mirror $mirror" >&2
  rm -rf "$tmp/out" && mkdir -p "$tmp/out"
  [[ -e $mirror ]] || { echo "error: no SageAttention source reachable" >&2; exit 1; }
  from_git "$mirror"
fi

mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$tmp/out" "$dest"
echo "SageAttention peer ($(head -n 1 "$dest/SOURCE")) in $dest:"
(cd "$dest" && find . -type f | sort | sed 's|^\./|  |')
du -sh "$dest" | cut -f1 | sed 's/^/  total /'
