"""The generated C as a CMake package and an Arduino library, built the way a firmware project takes them in:
CMake with a C++ consumer through the package's target, and the Arduino library's sources cross-compiled for a
Cortex-M4 and linked with a C++ 'sketch' (Arduino sketches are C++)."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from edgewise.bundle import read_bundle
from edgewise.codegen.compile import compile_bundle
from edgewise.codegen.package import library_name
from edgewise.targets import load_target

from ..harness import build_host, have, tone_recording, wav_bytes


NO_CMAKE = not (have("cmake") and have("g++")) and not os.environ.get("CI")  # in CI a missing tool fails
NO_ARM_CXX = not have("arm-none-eabi-g++") and not os.environ.get("CI")


@pytest.mark.e2e
@pytest.mark.skipif(NO_CMAKE, reason="cmake and g++ not installed (see .ci/run)")
def test_the_cmake_package_builds_for_a_cpp_consumer_and_its_demo_hears_what_the_host_build_hears(
        tmp_path, tone_bundle):
    # Prepare: an audio bundle compiled with both packages; a C++ program that uses the package's target
    bundle = tone_bundle
    compiled = compile_bundle(bundle, tmp_path / "c", load_target("mcu-256k"), update_bundle=False,
                              packages=("cmake", "arduino"))
    lib = library_name(read_bundle(bundle).name)
    pkg = tmp_path / "c" / "cmake"
    assert (pkg / "CMakeLists.txt").is_file() and (pkg / "include" / f"{lib}.h").is_file()
    app = tmp_path / "app"
    app.mkdir()
    (app / "CMakeLists.txt").write_text(f"cmake_minimum_required(VERSION 3.13)\nproject(app C CXX)\n"
                                        f"set({lib.upper()}_DEMO ON)\nadd_subdirectory({pkg} lib)\n"
                                        f"add_executable(app app.cpp)\n"
                                        f"target_link_libraries(app PRIVATE edgewise::{lib})\n")
    (app / "app.cpp").write_text(f"""#include <cstdio>
#include <{lib}.h>
static void heard(int label, double score, uint32_t ms, void *) {{ std::printf("%s %.4f %.3f\\n", ew_labels[label], score, ms / 1000.0); }}
int main() {{
    static int16_t chunk[300];
    ew_stream_reset();
    while (std::size_t n = std::fread(chunk, sizeof(int16_t), 300, stdin)) ew_stream_push(chunk, (int)n, heard, nullptr);
    return 0;
}}
""")
    pcm, _ = tone_recording(["mid", "high", "low"])
    (tmp_path / "talk.wav").write_bytes(wav_bytes(pcm.astype(np.float32) / 32767, 16000))
    # Execute: configure and build with CMake; the C++ app pushes raw PCM, the package's demo reads the WAV
    build = tmp_path / "build"
    for cmd in (["cmake", "-S", str(app), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", str(build), "-j", "2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cpp = subprocess.run([str(build / "app")], input=pcm.tobytes(), capture_output=True, timeout=60)
    demo = subprocess.run([str(build / "lib" / f"{lib}_demo"), str(tmp_path / "talk.wav")], capture_output=True,
                          text=True, timeout=60)
    host = subprocess.run([str(build_host(compiled.sources, tmp_path / "host")), str(tmp_path / "talk.wav")],
                          capture_output=True, text=True, timeout=60)
    # Assert: the same words, at the same times, from all three
    assert host.returncode == 0 and len(host.stdout.splitlines()) >= 3, host.stderr
    assert cpp.stdout.decode() == demo.stdout == host.stdout


@pytest.mark.skipif(NO_ARM_CXX, reason="arm-none-eabi-g++ not installed (see .ci/run)")
def test_the_arduino_library_cross_compiles_and_links_with_a_cpp_sketch(digits_bundle, tmp_path):
    compile_bundle(digits_bundle, tmp_path / "c", load_target("mcu-256k"), update_bundle=False, packages=("arduino",))
    lib = library_name(read_bundle(digits_bundle).name)
    root = tmp_path / "c" / "arduino" / lib
    props = dict(line.split("=", 1) for line in (root / "library.properties").read_text().splitlines() if line)
    assert props["name"] == lib and props["includes"] == f"{lib}.h" and props["architectures"] == "*"
    assert {"version", "author", "maintainer", "sentence", "paragraph", "category", "url"} <= set(props)
    assert (root / "examples" / f"{lib}_demo" / f"{lib}_demo.ino").is_file()
    assert not (root / "src" / "main.c").exists(), "the demo main is not part of the library"
    # the sketch's C++ includes the umbrella header and calls the C API; the C sources build as Arduino's do
    (tmp_path / "sketch.cpp").write_text(f"#include <{lib}.h>\nint main() {{\n  static int8_t in[EW_INPUT_SIZE];\n"
                                         "  static int8_t out[EW_OUTPUT_SIZE];\n  ew_model_invoke(in, out);\n"
                                         "  return ew_argmax(out, EW_OUTPUT_SIZE) < EW_NUM_LABELS ? 0 : 1;\n}\n")
    flags = ["-mcpu=cortex-m4", "-mthumb", "-Os", "-Wall", "-Wextra", "-Werror"]
    objs = []
    for c in sorted((root / "src").glob("*.c")):
        obj = tmp_path / (c.stem + ".o")
        subprocess.run(["arm-none-eabi-gcc", *flags, "-std=c99", "-c", str(c), "-o", str(obj)], check=True)
        objs.append(str(obj))
    proc = subprocess.run(["arm-none-eabi-g++", *flags, f"-I{root / 'src'}", "--specs=nosys.specs",
                           str(tmp_path / "sketch.cpp"), *objs, "-o", str(tmp_path / "sketch.elf")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]  # unresolved symbols here would be C++ name mangling
