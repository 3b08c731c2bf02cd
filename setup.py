"""Build the one compiled module, ``streams.vast._walk`` (the VAST tree walk).

Everything else about the distribution is declared in pyproject.toml. The
module reads libxml2's structs through lxml's C API, so it compiles against
the headers that the (exactly pinned) lxml wheel ships.
"""

import lxml
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension(
                "streams.vast._walk",
                ["streams/vast/_walk.pyx"],
                include_dirs=lxml.get_include(),
            )
        ],
        compiler_directives={"language_level": "3"},
    )
)
