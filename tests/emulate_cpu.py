r"""Runs pytest with the floating-point kernels of an older x86-64 CPU.

Parity tests compare two frameworks (or two code paths) whose float32 kernels round
differently on every instruction set: torch picks its ATen, oneDNN and MKL kernels and XLA
generates its code for the CPU it runs on, so a test tuned on an AVX-512 machine can fail on
an AVX2-only one (reported on an AMD CPU). This launcher caps every library at the chosen
instruction set before torch or JAX is imported, so such failures reproduce on any newer
machine:

  python tests/emulate_cpu.py avx2 -- -q -m parity        # the parity tests, AVX2 kernels
  python tests/emulate_cpu.py sse4_2 -- -q tests/test_port_parity.py
  python tests/emulate_cpu.py avx2 --print                # the variables, for a shell

The variables (each library ignores the others'; a cap above the machine's own instruction
set changes nothing):

* `ATEN_CPU_CAPABILITY`: torch's vectorised ATen kernels (`default` = SSE4.2-era code);
* `ONEDNN_MAX_CPU_ISA`: oneDNN (torch's convolutions and pooling);
* `MKL_ENABLE_INSTRUCTIONS`: Intel MKL (torch's matrix products);
* `XLA_FLAGS=--xla_cpu_max_isa=...`: the code XLA:CPU generates for JAX (appended to any
  `XLA_FLAGS` already set).

The levels are x86-64 instruction sets: elsewhere (Arm) the variables change nothing and
the tests simply run again with the machine's own kernels.

Exit status: pytest's.
"""

import os
import subprocess
import sys

# Per level: (ATen capability, oneDNN max ISA, MKL instructions, XLA max ISA).
LEVELS = {
    "avx512": ("avx512", "AVX512_CORE", "AVX512", "AVX512"),
    "avx2": ("avx2", "AVX2", "AVX2", "AVX2"),
    "avx": ("default", "AVX", "AVX", "AVX"),
    "sse4_2": ("default", "SSE41", "SSE4_2", "SSE4_2"),
}
USAGE = (f"usage: python tests/emulate_cpu.py {{{','.join(LEVELS)}}} [--print | [--] "
         "PYTEST_ARGS...]")


def environment(level: str, base=None) -> dict[str, str]:
  """`base` (default `os.environ`) with the variables that cap every library at `level`.

  Raises:
    ValueError: an unknown level, listing the valid ones.
  """
  if level not in LEVELS:
    raise ValueError(f"unknown instruction set {level!r}; valid: {', '.join(LEVELS)}")
  aten, onednn, mkl, xla = LEVELS[level]
  env = dict(os.environ if base is None else base)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_cpu_max_isa")]
  env.update(ATEN_CPU_CAPABILITY=aten, ONEDNN_MAX_CPU_ISA=onednn, MKL_ENABLE_INSTRUCTIONS=mkl,
             XLA_FLAGS=" ".join([*flags, f"--xla_cpu_max_isa={xla}"]))
  return env


def main(argv: list[str]) -> int:
  if not argv or argv[0] not in LEVELS:
    print(USAGE, file=sys.stderr)
    return 2
  level, rest = argv[0], argv[1:]
  env = environment(level)
  if rest == ["--print"]:
    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                 "XLA_FLAGS"):
      print(f"export {name}='{env[name]}'")
    return 0
  if rest[:1] == ["--"]:
    rest = rest[1:]
  print(f"emulating {level}: " + " ".join(
      f"{k}={env[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                "MKL_ENABLE_INSTRUCTIONS", "XLA_FLAGS")), flush=True)
  # A fresh interpreter: the variables must be set before torch or JAX is first imported.
  return subprocess.call([sys.executable, "-m", "pytest", *rest], env=env)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
