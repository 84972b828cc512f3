"""Amplify's merge step: every parent's output, mounted at /inputs/<node>, copied to /outputs/<node>, and an
index of them in /outputs/index.json. A parent that was skipped or failed is simply not there."""

from __future__ import annotations

import json
import shutil

from amplify_common import INPUTS, OUTPUTS, emit, input_files


def main() -> int:
    index: dict[str, list[str]] = {}
    OUTPUTS.mkdir(parents=True, exist_ok=True)
    parents = sorted(p for p in INPUTS.iterdir() if p.is_dir() and not p.is_symlink()) if INPUTS.is_dir() else []
    for parent in parents:
        files = []
        for rel, path in input_files(parent):
            dest = OUTPUTS / parent.name / rel
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
            except OSError as exc:      # this file is not merged; the others are
                emit({"node": parent.name, "path": rel, "error": f"not copied: {exc.strerror or exc}"})
                continue
            files.append(rel)
        index[parent.name] = files
        emit({"node": parent.name, "files": len(files)})
    (OUTPUTS / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
