"""`tests/emulate_cpu.py`: the launcher that gives torch and XLA an older CPU's kernels."""

import importlib.util
import pathlib
import platform
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("emulate_cpu", ROOT / "tests" / "emulate_cpu.py")
emulate_cpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(emulate_cpu)


def test_avx2_caps_every_library_and_keeps_other_xla_flags():
  env = emulate_cpu.environment("avx2", {"XLA_FLAGS": "--xla_dump_to=/tmp/d "
                                                      "--xla_cpu_max_isa=AVX512", "HOME": "/h"})
  assert env["ATEN_CPU_CAPABILITY"] == "avx2"
  assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
  assert env["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"
  assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/d --xla_cpu_max_isa=AVX2"
  assert env["HOME"] == "/h"
  assert emulate_cpu.environment("sse4_2", {})["XLA_FLAGS"] == "--xla_cpu_max_isa=SSE4_2"


def test_unknown_level_is_named_with_the_valid_ones():
  with pytest.raises(ValueError, match="unknown instruction set 'avx3'; valid: avx512, avx2"):
    emulate_cpu.environment("avx3", {})
  assert emulate_cpu.main(["avx3"]) == 2


def test_print_gives_shell_exports(capsys):
  assert emulate_cpu.main(["avx", "--print"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert "export ATEN_CPU_CAPABILITY='default'" in lines
  assert any(line.startswith("export XLA_FLAGS='") and "--xla_cpu_max_isa=AVX'" in line
             for line in lines)


def test_the_launched_pytest_sees_the_variables_and_returns_its_status(tmp_path):
  probe = tmp_path / "test_probe.py"
  probe.write_text("import os\n\ndef test_env():\n"
                   "  assert os.environ['ONEDNN_MAX_CPU_ISA'] == 'AVX'\n"
                   "  assert '--xla_cpu_max_isa=AVX' in os.environ['XLA_FLAGS'].split()\n")
  script = str(ROOT / "tests" / "emulate_cpu.py")
  args = ["-q", "-p", "no:cacheprovider", str(probe)]
  assert subprocess.call([sys.executable, script, "avx", "--", *args], cwd=tmp_path) == 0
  assert subprocess.call([sys.executable, script, "avx2", "--", *args], cwd=tmp_path) == 1


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="the levels are x86-64 instruction sets")
def test_torch_runs_its_avx2_kernels():
  """torch reports the capped capability, and oneDNN's convolution runs AVX2 code."""
  pytest.importorskip("torch")
  code = ("import torch\n"
          "print('capability', torch.backends.cpu.get_cpu_capability())\n"
          "with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):\n"
          "  torch.nn.functional.conv2d(torch.ones(2, 64, 32, 32), torch.ones(64, 64, 3, 3))\n")
  out = subprocess.run([sys.executable, "-c", code], env=emulate_cpu.environment("avx2"),
                       capture_output=True, text=True, check=True).stdout
  assert "capability AVX2" in out
  isa = [line for line in out.splitlines() if line.startswith("onednn_verbose") and "isa:" in line]
  assert isa and all(line.endswith("isa:Intel AVX2") for line in isa), isa
