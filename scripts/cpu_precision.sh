# Sourced by the CPU scripts. PRECISION is the autocast precision they train in, unless set (fp32 or bf16): bf16
# where the CPU computes it natively (AVX-512 BF16 or AMX), fp32 elsewhere. Emulated bf16 is many times slower: on an
# AVX2-only CPU a toy base UNet step of batch 128 took 62.6 s in bf16 against 2.95 s in fp32
# (benchmarks/bench_base_train.py; docs/benchmarks.md).
if [[ -z "${PRECISION:-}" ]]; then
  if grep -qE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then PRECISION=bf16; else PRECISION=fp32; fi
fi
case "$PRECISION" in fp32|bf16) ;; *) echo "PRECISION must be fp32 or bf16, not '$PRECISION'" >&2; exit 2 ;; esac
