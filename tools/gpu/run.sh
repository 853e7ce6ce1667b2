#!/usr/bin/env bash
# meft GPU bundle runner, for the GPU machine (driver 580 = CUDA 13.0; CUDA 13 libraries present,
# no Rust, no network). Packed by `cargo xtask gpu-bundle` next to bin/.
#
#   run.sh --check          list the CUDA libraries found and the GPU
#   run.sh all              --check, device tests, bandwidth bench, then `bench`; logs + JSON under $OUT (or ./out)
#   run.sh bench [ARGS...]  meft bench-gpu on cuda:0 for the llama7b and smollm2 shapes (random weights; the
#                           GGUF is not carried), JSON + Markdown + logs into $OUT/gpu/; ARGS go to both runs
#   run.sh BIN [ARGS...]    run bin/BIN (meft, device_test, device_bw) with the library paths set
#
# The binaries link no CUDA library at load time: cudarc dlopens libcuda.so.1, libcublas.so.13,
# libcurand.so.10 and libnvrtc.so.13, found through LD_LIBRARY_PATH set here.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
paths=""
add_path() { [ -d "$1" ] || return 0; case ":$paths:" in *":$1:"*) ;; *) paths="${paths:+$paths:}$1" ;; esac; }
include=""
for py in python3 /opt/torch/.venv/bin/python3; do
  site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null) || continue
  add_path "$site/nvidia/cu13/lib"
  if [ -z "$include" ] && [ -e "$site/nvidia/cu13/include/cuda_bf16.h" ]; then include="$site/nvidia/cu13/include"; fi
done
add_path /usr/local/cuda/lib64
add_path /usr/local/cuda/targets/x86_64-linux/lib
if [ -z "$include" ] && [ -e /usr/local/cuda/include/cuda_bf16.h ]; then include=/usr/local/cuda/include; fi
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
  for d in /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64; do
    if [ -e "$d/libcuda.so.1" ]; then add_path "$d"; fi
  done
fi
export LD_LIBRARY_PATH="$paths${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CUDA_INCLUDE_DIR=${CUDA_INCLUDE_DIR:-$include}

check() {
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  echo "CUDA_INCLUDE_DIR=$CUDA_INCLUDE_DIR"
  for lib in libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
    found=""
    IFS=: read -ra dirs <<<"$LD_LIBRARY_PATH"
    for d in "${dirs[@]}"; do if [ -e "$d/$lib" ]; then found="$d/$lib"; break; fi; done
    [ -n "$found" ] || found=$(ldconfig -p 2>/dev/null | awk -v l="$lib" '$1==l {print $NF; exit}')
    echo "$lib -> ${found:-MISSING}"
  done
  nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
}

# bench-gpu for both shapes; a failing shape does not stop the other. Returns 1 if either failed.
bench() {
  local out=${OUT:-$PWD/out}/gpu status=0
  mkdir -p "$out"
  for shape in llama7b smollm2; do
    "$here/bin/meft" bench-gpu --device cuda:0 --shape "$shape" --out "$out" "$@" 2>&1 | tee "$out/bench-gpu-$shape.log" || status=1
  done
  return $status
}

case "${1:-}" in
  --check) check ;;
  bench) bench "${@:2}" ;;
  all)
    out=${OUT:-$PWD/out}; mkdir -p "$out"
    check 2>&1 | tee "$out/check.txt"
    status=0
    "$here/bin/device_test" --test-threads=1 --nocapture 2>&1 | tee "$out/device_test.txt" || status=1
    MEFT_BENCH_JSON="$out/device_bw.json" "$here/bin/device_bw" 2>&1 | tee "$out/device_bw.txt" || status=1
    bench || status=1
    exit $status ;;
  "") echo "usage: $0 --check | all | BIN [ARGS...]; bins: $(ls "$here/bin")" >&2; exit 2 ;;
  *) exec "$here/bin/$1" "${@:2}" ;;
esac
