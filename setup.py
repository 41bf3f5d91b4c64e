"""Build the Cython extensions of cbackprop.

Global Cython directives turn bounds and wraparound checks off; set
``CBACKPROP_CYTHON_DEBUG=1`` to turn them (and initializedcheck) back on
for debugging.  ``blas_int`` is taken from SciPy's ``cython_blas`` when that
SciPy exports it (1.18+) and defined as ``int`` otherwise (SciPy <= 1.17,
whose BLAS dimensions are 32-bit ``int``).

Rebuilds are incremental: ``pip install -e .`` (or ``python setup.py
build_ext --inplace``) regenerates and recompiles only the modules whose
sources changed, and compiles them in parallel, one job per core
(``CBACKPROP_BUILD_JOBS`` overrides the count).
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from pathlib import Path

import Cython
import numpy as np
import scipy
import setuptools
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
PKG = HERE / "cbackprop"
MODULES = ["_blas", "_threads", "_activations", "_losses", "_network", "_train", "_curvature",
           "_lm", "_interrupt", "_lbfgs"]
# What a build depends on besides the sources: when any of it changes, every
# module is regenerated and recompiled.
STAMP = HERE / "build" / "cbackprop-build-stamp.json"


def _scipy_exports_blas_int():
    pxd = Path(scipy.__file__).parent / "linalg" / "cython_blas.pxd"
    return pxd.exists() and "blas_int" in pxd.read_text()


def _write_config():
    # Generated at build time: a .pxi included by _blas.pxd.
    if _scipy_exports_blas_int():
        body = "from scipy.linalg.cython_blas cimport blas_int\n"
    else:
        body = "ctypedef int blas_int\n"
    target = PKG / "_config.pxi"
    if not target.exists() or target.read_text() != body:
        target.write_text(body)


def _directives():
    debug = os.environ.get("CBACKPROP_CYTHON_DEBUG", "0") not in ("", "0")
    return {
        "language_level": 3,
        "boundscheck": debug,
        "wraparound": debug,
        "initializedcheck": debug,
        "cdivision": True,
    }


def _jobs():
    return int(os.environ.get("CBACKPROP_BUILD_JOBS", 0)) or os.cpu_count() or 1


def _build_config():
    return {"cython": Cython.__version__, "numpy": np.__version__,
            "python": sysconfig.get_config_var("EXT_SUFFIX"), "directives": _directives(),
            "flags": BuildExt.FLAGS, "openmp": BuildExt.OPENMP}


def _same_config():
    """True when the last build used the same tools and options (then the
    timestamps of the sources alone decide what to rebuild)."""
    current = _build_config()
    same = STAMP.exists() and json.loads(STAMP.read_text()) == current
    STAMP.parent.mkdir(exist_ok=True)
    STAMP.write_text(json.dumps(current, indent=1))
    return same


def _shared_inputs():
    """The project files every module may include."""
    return sorted(p for pattern in ("*.pxd", "*.pxi", "*.h") for p in PKG.glob(pattern))


def _up_to_date(target, sources):
    target = Path(target)
    return target.exists() and all(target.stat().st_mtime >= Path(s).stat().st_mtime
                                   for s in sources)


def _extensions():
    """One Extension per module; only the modules whose C file is older than
    their sources are cythonized (Cython itself would regenerate them all
    whenever its own installation is newer, as in every isolated pip build)."""
    config_unchanged = _same_config()
    shared = _shared_inputs()
    stale, fresh = [], []
    for name in MODULES:
        pyx = PKG / f"{name}.pyx"
        if not pyx.exists():
            continue
        ext = Extension(
            f"cbackprop.{name}", [str(pyx.relative_to(HERE))],
            include_dirs=[np.get_include(), "cbackprop"],
            depends=[str(p.relative_to(HERE)) for p in shared],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
        c_file = pyx.with_suffix(".c")
        if config_unchanged and _up_to_date(c_file, [pyx, *shared]):
            ext.sources = [str(c_file.relative_to(HERE))]
            fresh.append(ext)
        else:
            stale.append(ext)
    if stale:
        stale = cythonize(stale, compiler_directives=_directives(), nthreads=_jobs(),
                          force=not config_unchanged)
    return stale + fresh, config_unchanged


class BuildExt(build_ext):
    """GCC-style flags that change no result:

    - ``-fno-math-errno``: with errno semantics every sqrt in a loop is a
      call behind a branch and gcc does not vectorize the loop (the Adam
      update ran at 3.5 ns per parameter, 1.7 ns without); nothing reads
      errno here.
    - ``-ffp-contract=off``: no fused multiply-adds, so that the AVX2 and
      AVX-512 clones of the activation loops (``_act.h``) round exactly as
      the baseline code does and results do not depend on the machine.

    Silenced, when the compiler knows them: the discarded-``const`` warnings
    of the C that Cython generates for a pointer into a ``const`` memoryview
    (``&v[i]``); the pointers are only read.

    Each compiled module is also in the package directory (editable installs
    and ``--inplace`` put it there); a module whose copy there is newer than
    its C file and headers is reused instead of compiled again.
    """

    FLAGS = ["-fno-math-errno", "-ffp-contract=off"]
    OPENMP = "-fopenmp"
    QUIET = ["-Wno-discarded-qualifiers", "-Wno-incompatible-pointer-types-discards-qualifiers"]
    config_unchanged = False

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = _jobs()

    def build_extensions(self):
        if self.compiler.compiler_type == "unix":
            quiet = "static const double x = 0;\ndouble *f(void) { double *q; q = &x; return q; }\n"
            flags = self.FLAGS + [f for f in self.QUIET if self._compiles(f, quiet)][:1]
            # OpenMP when the compiler has it (the blocked kernels' teams);
            # without it they run on the calling thread alone.
            omp_probe = "#include <omp.h>\nint f(void) { return omp_get_max_threads(); }\n"
            omp = [self.OPENMP] if self._compiles(self.OPENMP, omp_probe) else []
            for ext in self.extensions:
                ext.extra_compile_args.extend(flags + omp)
                ext.extra_link_args.extend(omp)
        super().build_extensions()

    def _compiles(self, flag, code):
        """Whether the compiler accepts ``code`` with ``flag`` under
        ``-Werror`` (an unknown flag fails too; for QUIET, the pattern
        Cython generates); quietly."""
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "probe.c"
            src.write_text(code)
            cmd = [*self.compiler.compiler_so, "-Werror", flag, "-c", str(src),
                   "-o", str(Path(tmp) / "probe.o")]
            try:
                return subprocess.run(cmd, capture_output=True).returncode == 0
            except OSError:
                return False

    def build_extension(self, ext):
        built = self.get_ext_fullpath(ext.name)
        in_package = PKG / os.path.basename(built)
        if (self.config_unchanged and not self.force
                and _up_to_date(in_package, [*ext.sources, *ext.depends])):
            # One write per line: extensions are built by parallel threads.
            sys.stderr.write(f"{ext.name}: up to date ({in_package.relative_to(HERE)})\n")
            os.makedirs(os.path.dirname(built), exist_ok=True)
            if in_package.resolve() != Path(built).resolve():
                shutil.copy2(in_package, built)
            return
        super().build_extension(ext)


def _license_metadata():
    # An SPDX expression needs setuptools 77; older ones (still in use for
    # in-place builds without isolation) take the plain license field.
    if int(setuptools.__version__.split(".")[0]) >= 77:
        return {"license_expression": "BSD-3-Clause", "license_files": ["LICENSE"]}
    return {"license": "BSD-3-Clause", "license_files": ["LICENSE"]}


# setuptools announces its editable strategy with an informational warning
# ("folders in your working directory with the same name as your package may
# take precedence during imports"): here that folder is the package, by design
# (the editable install completes it with the compiled modules).
warnings.filterwarnings("ignore", message="Editable installation")
_write_config()
EXTENSIONS, BuildExt.config_unchanged = _extensions()
setup(ext_modules=EXTENSIONS, cmdclass={"build_ext": BuildExt},
      packages=["cbackprop"], package_data={"cbackprop": ["*.pxd", "*.pyx", "*.h"]},
      **_license_metadata())
