#!/bin/sh
# slim-venv.sh VENV: removes from a finished serving venv what `edgefit serve` never loads, in the
# Dockerfile's build stage (needs binutils there: strip, readelf). What goes, and why it is safe:
#   - pip, setuptools (with pkg_resources): installers, not servers;
#   - protobuf: only onnxruntime's tools (below) import it;
#   - onnxruntime's tools/, transformers/, quantization/ (model conversion and tuning, import
#     torch or onnx) and libonnxruntime.so (the C API library: the Python module is statically
#     linked and does not load it);
#   - numpy's build and test helpers (distutils, f2py, testing, _pyinstaller, the _simd and
#     *_tests extension modules) and C headers;
#   - Pillow's font, colour-management, AVIF and Tk modules (the service decodes JPEG, PNG and
#     WebP only), then every bundled library that no remaining extension module loads;
#   - type stubs, Cython sources and headers;
#   - byte code of modules a started server has not imported (a module imported later is
#     compiled in memory when first imported; the root is read-only, so nothing is written);
#   - debug symbols of extension modules that ship them (uvloop, httptools: about 13 MB).
# tests/test-container.sh then proves the slim image still serves and classifies.
set -eu
venv=$1
site=$(echo "$venv"/lib/python3*/site-packages)

"$venv/bin/pip" uninstall --yes --quiet setuptools protobuf
"$venv/bin/pip" uninstall --yes --quiet pip

rm -rf "$site/onnxruntime/tools" "$site/onnxruntime/transformers" "$site/onnxruntime/quantization" \
    "$site"/onnxruntime/capi/libonnxruntime.so.*
rm -rf "$site/numpy/distutils" "$site/numpy/f2py" "$site/numpy/testing" "$site/numpy/_pyinstaller" \
    "$site/numpy/_core/include" "$site/numpy/_core/lib" \
    "$site"/numpy/_core/_simd.* "$site"/numpy/_core/_*_tests.*
rm -f "$site"/PIL/_imagingft.* "$site"/PIL/_imagingcms.* "$site"/PIL/_avif.* "$site"/PIL/_imagingtk.* \
    "$venv"/bin/f2py \
    "$venv"/bin/numpy-config
find "$site" \( -name '*.pyi' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.h' -o -name '*.c' \
    -o -name py.typed \) -type f -delete
find "$site" -type d -name tests -prune -exec rm -rf {} +

# Bundled libraries (numpy.libs, pillow.libs) that no extension module loads, directly or
# through another library (bundled libraries may need each other in a cycle: walk from the
# extension modules, not from every file).
needed() { xargs -r readelf -d 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort -u; }
loaded=$(find "$site" -name '*.so*' -type f ! -path '*.libs/*' | needed)
while :; do
    more=$(for name in $loaded; do find "$site" -path "*.libs/$name" -type f; done | needed)
    grown=$(printf '%s\n%s\n' "$loaded" "$more" | sed '/^$/d' | sort -u)
    [ "$grown" = "$loaded" ] && break
    loaded=$grown
done
find "$site" -path '*.libs/*' -type f | while read -r lib; do
    echo "$loaded" | grep -qxF "$(basename "$lib")" || rm -f "$lib"
done

# Debug information of extension modules that ship it (uvloop, httptools; the other wheels' are
# stripped already). Not numpy's bundled OpenBLAS: auditwheel rewrote it with patchelf, and
# strip leaves it unloadable ("ELF load command address/offset not page-aligned").
strip --strip-debug "$site"/uvloop/*.so "$site"/httptools/parser/*.so

# Byte code: kept for what a server imports up to serving its first request, dropped for the rest.
"$venv/bin/python" - "$site" <<'EOF'
import sys
from pathlib import Path

import uvicorn
from PIL import Image

from service import cli
from service.app import create_app
from service.settings import Settings

uvicorn.Config(create_app(Settings()), log_level="warning").load()  # loop, protocol, lifespan
Image.init()  # every image plugin, as the first decode does
del cli
used = {m.__cached__ for m in list(sys.modules.values()) if getattr(m, "__cached__", None)}
for pyc in Path(sys.argv[1]).rglob("__pycache__/*.pyc"):
    if str(pyc) not in used:
        pyc.unlink()
EOF
find "$site" -type d -empty -delete
