"""Build fastbert._C: C++ CPU kernels always, CUDA kernels when nvcc and a CUDA build of torch are present.

Switches (environment):
  FASTBERT_CUDA=0|1         skip / force the CUDA kernels (default: build them when possible)
  FASTBERT_CUDA_ARCHS       e.g. "7.5;8.0;8.6;9.0+PTX" (default)
  FASTBERT_PTXAS_VERBOSE=1  print ptxas registers/spills per kernel
  FASTBERT_PCH=0            no precompiled headers for csrc/cpu (default: one per instruction set, build/)
  FASTBERT_DEBUG=1          -O0 -g (default: -O3 -g0; Python's own CFLAGS carry -g: 40% more compile time)

The objects go to build/temp.<platform>-<python>/ in the source tree, also for `pip install -e` (whose default is
a fresh temporary folder each time): ninja then recompiles only what changed, so installing the package again
(another extra, another editable install) only links.

The CPU kernels (csrc/cpu/*.cpp) are compiled three times, once per instruction set (AVX-512, AVX2,
plain C++), each into its own namespace (CPU_CAPABILITY); csrc/cpu/isa.h picks one at run time.
Build against the torch that is installed: pip install --no-build-isolation .
"""

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - build-time message
    sys.exit(
        "fastbert needs torch installed before it is built: pip install torch, then pip install --no-build-isolation ."
    )

from packaging.version import Version

ROOT = os.path.dirname(os.path.abspath(__file__))
MIN_TORCH = Version("2.11")
USE_PCH = os.environ.get("FASTBERT_PCH", "1") != "0"

# One entry per CPU instruction set: (CPU_CAPABILITY name, extra compiler flags).
CPU_ISAS = [
    ("DEFAULT", []),
    ("AVX2", ["-mavx2", "-mfma", "-mf16c", "-mbmi2"]),
    ("AVX512", ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c", "-mbmi2"]),
]


def note(msg):
    print(f"fastbert setup: {msg}", file=sys.stderr)


def check_cxx_compiler():
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None and shutil.which("g++") is None:
        sys.exit(
            "fastbert setup: no C++ compiler found. Install one (Debian/Ubuntu: apt-get install g++; "
            "Fedora: dnf install gcc-c++; macOS: xcode-select --install) and build again."
        )


def want_cuda():
    flag = os.environ.get("FASTBERT_CUDA", "").strip()
    if flag == "0":
        return False
    reasons = []
    if torch.version.cuda is None:
        reasons.append("the installed torch is a CPU-only build")
    if cpp_extension.CUDA_HOME is None or shutil.which(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")) is None:
        reasons.append("no CUDA toolkit found (set CUDA_HOME to the toolkit root)")
    if flag == "1":
        if reasons:
            sys.exit("fastbert setup: FASTBERT_CUDA=1 but " + "; ".join(reasons))
        return True
    if reasons:
        note("building the CPU kernels only: " + "; ".join(reasons) + ".")
        return False
    return True


def cuda_arch_flags():
    archs = os.environ.get("FASTBERT_CUDA_ARCHS", "7.5;8.0;8.6;9.0+PTX")
    flags = []
    for arch in filter(None, (a.strip() for a in archs.replace(",", ";").split(";"))):
        ptx = arch.endswith("+PTX")
        num = arch.replace("+PTX", "").replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    # Explicit -gencode flags keep torch from asking a (possibly absent) GPU for its arch.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", archs)
    return flags


class BuildExtension(cpp_extension.BuildExtension):
    """torch's BuildExtension, plus one compile of csrc/cpu/*.cpp per CPU instruction set."""

    def finalize_options(self):
        super().finalize_options()
        if getattr(self, "editable_mode", False):
            # setuptools' editable build compiles in a new temporary folder each time, so every
            # `pip install -e` recompiled everything; build/ keeps ninja's objects and logs between installs.
            plat = self.get_finalized_command("build").plat_name
            self.build_temp = os.path.join(ROOT, "build", f"temp.{plat}-{sys.implementation.cache_tag}")

    def build_extension(self, ext):
        isa_sources = getattr(ext, "isa_sources", [])
        base = (
            list(ext.extra_compile_args["cxx"])
            if isinstance(ext.extra_compile_args, dict)
            else list(ext.extra_compile_args)
        )
        isa_flags = {
            isa: base + [f"-DCPU_CAPABILITY={isa}", f"-DCPU_CAPABILITY_{isa}"] + flags for isa, flags in CPU_ISAS
        }
        pch = self.precompile_headers(ext, isa_sources, isa_flags) if USE_PCH else {}
        for isa, flags in isa_flags.items():
            objects = self.compiler.compile(
                isa_sources,
                output_dir=os.path.join(self.build_temp, f"isa_{isa.lower()}"),
                include_dirs=ext.include_dirs,
                extra_postargs={"cxx": flags + pch.get(isa, []), "nvcc": []},
                depends=ext.depends,
            )
            ext.extra_objects = list(ext.extra_objects or []) + [
                o for o in objects if o not in (ext.extra_objects or [])
            ]
        super().build_extension(ext)

    def precompile_headers(self, ext, isa_sources, isa_flags):
        """One precompiled header per instruction set, of the library headers csrc/cpu includes.

        Parsing ATen's and torch's headers is most of the compile time of each csrc/cpu/*.cpp (about 5 of 8 s
        at -O3 -g0), paid 3 x 14 times; a .gch is parsed once per instruction set. Its flags are those of the
        objects (g++ checks them and, with -Winvalid-pch, says so when it cannot use the .gch; the compile is then
        correct, only slower). Its own ninja file rebuilds it when a header or a flag changes; the objects follow
        (see the stamp below). Returns {isa: extra flags}.
        """
        includes = set()
        for path in isa_sources + sorted(glob.glob("csrc/cpu/*.h")):
            with open(path, encoding="utf-8") as f:
                includes.update(re.findall(r"^\s*#\s*include\s*(<[^>]+>)", f.read(), flags=re.M))
        if not includes:
            return {}
        cxx = os.environ.get("CXX", "c++")  # what torch's ninja files call
        incs = []
        for d in list(ext.include_dirs) + list(self.compiler.include_dirs):
            if f"-I{os.path.abspath(d)}" not in incs:
                incs.append(f"-I{os.path.abspath(d)}")
        root = os.path.abspath(os.path.join(self.build_temp, "pch"))
        os.makedirs(root, exist_ok=True)
        lines = [
            "ninja_required_version = 1.3",
            "rule pch",
            "  command = $cmd",
            "  depfile = $out.d",
            "  deps = gcc",
            "",
        ]
        extra = {}
        for isa, flags in isa_flags.items():
            header = os.path.join(root, f"{isa.lower()}", "fastbert_pch.h")
            text = (
                "// Generated by setup.py: the library headers of csrc/cpu, precompiled (forced in with -include).\n"
                + "".join(f"#include {h}\n" for h in sorted(includes))
            )
            os.makedirs(os.path.dirname(header), exist_ok=True)
            if not os.path.exists(header) or open(header, encoding="utf-8").read() != text:
                with open(header, "w", encoding="utf-8") as f:
                    f.write(text)
            # ninja expands a build block's variables before $in and $out exist: the paths are spelt out.
            cmd = (
                [cxx, "-MMD", "-MF", f"{header}.gch.d"]
                + self.compiler.compiler_so[1:]
                + incs
                + flags
                + ["-x", "c++-header", header, "-o", f"{header}.gch"]
            )
            lines += [
                f"build {header}.gch: pch {header}",
                "  cmd = " + " ".join(shlex.quote(c).replace("$", "$$") for c in cmd),
                "",
            ]
            extra[isa] = header
        with open(os.path.join(root, "build.ninja"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
        note("precompiling the csrc/cpu library headers (one .gch per instruction set)")
        subprocess.run(
            ["ninja", "-C", root] + (["-j", os.environ["MAX_JOBS"]] if os.environ.get("MAX_JOBS") else []), check=True
        )
        # g++ leaves a forced .gch out of the objects' dependency files; a stamp of it in their command lines
        # makes ninja recompile them whenever it is rebuilt (a macro the header never reads keeps the .gch valid).
        return {
            isa: ["-Winvalid-pch", f"-DFASTBERT_PCH_STAMP={os.stat(header + '.gch').st_mtime_ns}", "-include", header]
            for isa, header in extra.items()
        }


def make_extension():
    if Version(Version(torch.__version__).base_version) < MIN_TORCH:
        sys.exit(f"fastbert needs torch >= {MIN_TORCH}; found {torch.__version__}")
    check_cxx_compiler()
    debug = os.environ.get("FASTBERT_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # -g0 overrides the -g of Python's CFLAGS (sysconfig), which torch puts before these flags.
    cxx = (
        opt
        + ([] if debug else ["-g0"])
        + ["-std=c++20", "-fopenmp", "-Wall", "-Wno-unused-function", "-Wno-unknown-pragmas"]
    )
    isa_sources = sorted(glob.glob("csrc/cpu/*.cpp"))
    sources = ["csrc/fastbert.cpp", "csrc/autograd.cpp", "csrc/inference.cpp", "csrc/host_pool.cpp"]
    depends = glob.glob("csrc/**/*.h", recursive=True) + glob.glob("csrc/**/*.cuh", recursive=True)
    kwargs = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=["-fopenmp"], depends=depends)
    if want_cuda():
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        nvcc = opt + ["-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"] + cuda_arch_flags()
        if os.environ.get("FASTBERT_PTXAS_VERBOSE") == "1":
            nvcc.append("-Xptxas=-v")
        # fastbert._C.cuda_archs() reports the list (torch shell-quotes each flag in its ninja file).
        archs = os.environ.get("FASTBERT_CUDA_ARCHS", "7.5;8.0;8.6;9.0+PTX").replace(";", ",")
        ext = cpp_extension.CUDAExtension(
            "fastbert._C",
            sources,
            extra_compile_args={
                "cxx": cxx + ["-DFASTBERT_WITH_CUDA", f'-DFASTBERT_CUDA_ARCHS="{archs}"'],
                "nvcc": nvcc + ["-DFASTBERT_WITH_CUDA"],
            },
            **kwargs,
        )
    else:
        ext = cpp_extension.CppExtension("fastbert._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
    ext.isa_sources = isa_sources
    return ext


setup(
    packages=find_packages(include=["fastbert", "fastbert.*"]),
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtension},
)
