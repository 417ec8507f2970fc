"""Real compilers and emulators for the generated C: host gcc, arm-none-eabi-gcc, qemu, valgrind.

These run outside Python (Debian packages gcc, gcc-arm-none-eabi + libnewlib-arm-none-eabi,
qemu-system-arm, valgrind); each missing tool is a CodegenError that names the package.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from edgewise.errors import CodegenError

HOST_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-O2"]
# Cortex-M4 with its single-precision FPU (M4F: the audio front end is float; the int8 model is not)
ARM_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard", "-O2", "-std=c99", "-Wall",
             "-Wextra", "-Werror", "-ffunction-sections", "-fdata-sections"]
TICK_INSTRUCTIONS = 40  # mps2 FPGAIO counter at 25 MHz; under qemu -icount shift=0 one instruction = 1 ns
SOURCES = ("model.c", "ew_kernels.c", "main.c")
AUDIO_SOURCES = ("ew_frontend.c", "ew_stream.c")  # present when the bundle declares an audio front end
# ... or a sensor front end (spectral features, or the standardized raw window) and the sensor stream
SENSOR_FRONTENDS = ("ew_spectral.c", "ew_window.c")
SENSOR_SOURCES = ("ew_sensor.c",)
BOARDS = ("mps2-an386",)  # Cortex-M4 boards the firmware is built for (and qemu-system-arm emulates)
PACKAGES = {"gcc": "gcc", "arm-none-eabi-gcc": "gcc-arm-none-eabi libnewlib-arm-none-eabi",
            "arm-none-eabi-size": "binutils-arm-none-eabi", "qemu-system-arm": "qemu-system-arm",
            "valgrind": "valgrind"}


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise CodegenError(f"{tool} not found: apt-get install {PACKAGES.get(tool, tool)}")
    return path


def _run(cmd: list[str], what: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise CodegenError(f"{what} timed out after {timeout:.0f} s") from e
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else proc.stderr
        raise CodegenError(f"{what} failed: {err.strip()[-800:]}")
    return proc


def _frontend(src: Path) -> tuple[tuple[str, ...], list[str]]:
    """The front end's C files in `src` and the define that tells the demo main about them."""
    if (src / AUDIO_SOURCES[0]).is_file():
        return AUDIO_SOURCES, ["-DEW_AUDIO_FRONTEND", "-lm"]
    if (src / SENSOR_SOURCES[0]).is_file():
        fe = tuple(f for f in SENSOR_FRONTENDS if (src / f).is_file())
        return fe + SENSOR_SOURCES, ["-DEW_SENSOR_FRONTEND", "-lm"]
    return (), []


def _sources(src: Path) -> list[str]:
    """The program's C files; with the bundle's audio front end (and its streaming keyword spotter), the demo
    reads PCM or a WAV file and runs it first; with a sensor front end, it streams a CSV of readings."""
    files, flags = _frontend(src)
    return [str(src / s) for s in SOURCES + files] + flags


def host_command(src: Path, exe: Path, flags: list[str] | None = None, gcc: str = "gcc") -> list[str]:
    """The host build of the generated C in `src` (the front end and PCM demo included when present)."""
    return [gcc, *(flags or HOST_FLAGS), "-o", str(exe), *_sources(src)]


def build_host(src: Path, exe: Path, flags: list[str] | None = None) -> Path:
    cmd = host_command(src, exe, flags, _need("gcc"))
    _run(cmd, "host build")
    return exe


def _arm_files() -> tuple[Path, Path]:
    root = Path(str(resources.files("edgewise.codegen") / "runtime" / "arm"))
    return root / "startup.c", root / "mps2.ld"


def build_arm(src: Path, elf: Path, embedded_inputs: bool = True, count: bool = False) -> Path:
    """Cortex-M4 program for qemu's mps2-an386: it runs the samples in src/inputs.h, or (embedded_inputs
    False, audio bundles) streams the WAV file named on its command line, read over semihosting. With
    `count`, it prints the instructions each sample took instead (see `count_instructions`)."""
    startup, script = _arm_files()
    defines = (["-DEW_EMBEDDED_INPUTS"] if embedded_inputs else []) + (["-DEW_COUNT_INSTRUCTIONS"] if count else [])
    cmd = [_need("arm-none-eabi-gcc"), *ARM_FLAGS, *defines, f"-I{src}", "-T", str(script),
           "--specs=rdimon.specs", "-Wl,--gc-sections", "-o", str(elf), str(startup),
           *_sources(src), "-lc", "-lrdimon"]
    _run(cmd, "arm-none-eabi-gcc build")
    return elf


def arm_sizes(src: Path, work: Path) -> dict[str, int]:
    """.text/.data/.bss of the model and kernels (and the front end and stream, if any) alone (no libc,
    no demo main), built with ARM_FLAGS."""
    gcc, size = _need("arm-none-eabi-gcc"), _need("arm-none-eabi-size")
    objs = []
    for name in [n for n in SOURCES if n != "main.c"] + list(_frontend(src)[0]):
        obj = work / (name[:-2] + ".o")
        _run([gcc, *ARM_FLAGS, "-c", "-o", str(obj), str(src / name)], f"arm-none-eabi-gcc {name}")
        objs.append(str(obj))
    out = _run([size, "-t", *objs], "arm-none-eabi-size", text=True).stdout
    total = out.strip().splitlines()[-1].split()
    return {"text": int(total[0]), "data": int(total[1]), "bss": int(total[2])}


def check_board(board: str) -> None:
    if board not in BOARDS:
        raise CodegenError(f"unknown board {board!r}; known: {', '.join(BOARDS)}")


def build_firmware(src: Path, board: str) -> tuple[Path, dict[str, int]]:
    """src/firmware.elf for `board` (the demo main takes a WAV path on its command line for audio bundles,
    stdin otherwise), and the .text/.data/.bss of the model, kernels and front end in it."""
    check_board(board)
    elf = build_arm(src, src / "firmware.elf", embedded_inputs=False)
    with tempfile.TemporaryDirectory() as work:
        sizes = arm_sizes(src, Path(work))
    return elf, sizes


def count_instructions(src: Path, work: Path) -> list[tuple[int, int]]:
    """(front end, model) instructions per sample of src/inputs.h on the emulated Cortex-M4: QEMU counts
    with -icount shift=0 (each instruction advances virtual time by 1 ns) and the program reads the
    board's 25 MHz counter around each call, so figures are exact to 40 instructions and free of host
    noise. The front end's is 0 for a model without one."""
    elf = build_arm(src, work / "count.elf", count=True)
    out = run_qemu(elf, icount=True)
    rows = [line.split()[1:] for line in out.splitlines() if line.startswith("ticks ")]
    if not rows:
        raise CodegenError(f"the counting build printed no counts: {out[-300:]}")
    return [(int(fe) * TICK_INSTRUCTIONS, int(model) * TICK_INSTRUCTIONS) for fe, model in rows]


def run_qemu(elf: Path, timeout: float = 120, args: list[str] | None = None, icount: bool = False) -> str:
    """The program's stdout on an emulated Cortex-M4 (mps2-an386); `args` are its command line, and files
    it opens are the host's (semihosting)."""
    if any("," in a or " " in a for a in args or []):  # qemu splits options at commas, the guest at spaces
        raise CodegenError("qemu's semihosting command line cannot hold a comma or a space: rename the file")
    config = "enable=on,target=native" + "".join(f",arg={a}" for a in [elf.name, *(args or [])])
    cmd = [_need("qemu-system-arm"), "-M", "mps2-an386", "-nographic", "-monitor", "none", "-serial", "none",
           "-semihosting-config", config, *(["-icount", "shift=0"] if icount else []), "-kernel", str(elf)]
    return _run(cmd, "qemu-system-arm", timeout=timeout, text=True).stdout


def callgrind_instructions(exe: Path, stdin: bytes, work: Path) -> int:
    """Instructions executed inside ew_model_invoke (all calls), counted by valgrind: noise-free."""
    out = work / "callgrind.out"
    cmd = [_need("valgrind"), "--tool=callgrind", f"--callgrind-out-file={out}", "--toggle-collect=ew_model_invoke",
           str(exe)]
    _run(cmd, "valgrind", timeout=600, input=stdin)
    text = out.read_text()
    m = re.search(r"^(?:summary|totals):\s+(\d+)", text, flags=re.M)
    if not m:
        raise CodegenError("callgrind wrote no instruction total")
    return int(m.group(1))
