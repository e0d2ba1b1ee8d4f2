"""Build the Containerfile as CI does (on a Debian base laid out by mmdebstrap) and print the image's size: on
disk, as `buildah images` gives it, and as pushed (the compressed layers of an OCI layout).

Needs root, buildah and mmdebstrap.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.image_harness import Buildah, build_base, build_image, require_image_tools  # noqa: E402


def main() -> None:
    buildah_binary, mmdebstrap = require_image_tools()
    work = Path(tempfile.mkdtemp(prefix="storage-audit-image-size-"))
    buildah = Buildah(buildah_binary, work / "home")
    try:
        image = build_image(buildah, build_base(buildah, mmdebstrap, work), work)
        print(buildah("images", "--format", "{{.Name}} {{.Size}}").strip())
        layout = work / "oci"
        buildah("push", image, f"oci:{layout}")
        blobs = layout / "blobs" / "sha256"
        index = json.loads((layout / "index.json").read_text())
        manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
        layers = [layer["size"] for layer in manifest["layers"]]
        mb = ", ".join(f"{size / 1e6:.1f} MB" for size in layers)
        print(f"pushed: {(sum(layers) + manifest['config']['size']) / 1e6:.1f} MB (layers {mb})")
    finally:
        buildah.clean()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
