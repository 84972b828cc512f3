"""The default workflow's job scripts, each run in the real image (bacalhau/amplify:latest, built by
scripts/setup-amplify.sh) over a real input directory, as a job runs them: /inputs read-only, /outputs
written, no network. Each produces the outputs it promises and a JSON line per file on stdout."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bacalhau.amplify.content import describe_files, select_files
from bacalhau.ipfs.unixfs import add_path, cid_str, cid_to_bytes
from bacalhau.node import Node
from tests.amplify_files import fixtures, make_png
from tests.conftest import run_cli

IMAGE = "bacalhau/amplify:latest"
DEFAULT = Path(__file__).resolve().parent.parent / "bacalhau" / "amplify" / "default.yaml"
pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def image() -> str:
    got = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, check=False)
    assert got.returncode == 0, f"{IMAGE} is missing: run scripts/setup-amplify.sh"
    return IMAGE


def entrypoint(job: str) -> list[str]:
    jobs = {j["id"]: j for j in yaml.safe_load(DEFAULT.read_text())["jobs"]}
    return list(jobs[job]["entrypoint"])


class Ran:
    def __init__(self, done: subprocess.CompletedProcess[str], out: Path) -> None:
        self.code = done.returncode
        self.stderr = done.stderr
        self.lines: list[dict[str, Any]] = [json.loads(line) for line in done.stdout.splitlines() if line]
        self.out = out

    def by_path(self) -> dict[str, dict[str, Any]]:
        return {line["path"]: line for line in self.lines}

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.out)) for p in self.out.rglob("*") if p.is_file())


def run_job(image: str, job: str, inputs: Path, out: Path, *, timeout: float = 120) -> Ran:
    out.mkdir(parents=True, exist_ok=True)
    cmd = ["docker", "run", "--rm", "--network", "none", "-v", f"{inputs}:/inputs:ro", "-v", f"{out}:/outputs",
           "--entrypoint", entrypoint(job)[0], image, *entrypoint(job)[1:]]
    return Ran(subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False), out)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixtures(tmp_path_factory.mktemp("amplify") / "in", video=True)


def test_metadata_describes_every_file(image: str, inputs: Path, tmp_path: Path) -> None:
    ran = run_job(image, "metadata-job", inputs, tmp_path / "out")
    assert ran.code == 0, ran.stderr
    got = ran.by_path()
    assert sorted(got) == ["clip.mp4", "empty", "noext", "notes.txt", "people.csv", "records.json", "red.png",
                           "sub/blue.png", "tone.wav"]
    assert got["records.json"]["Content-Type"] == "application/json"
    assert got["noext"]["Content-Type"] == "application/json"
    assert got["people.csv"]["Content-Type"] == "text/csv"
    assert (got["red.png"]["width"], got["red.png"]["height"]) == (64, 48)
    assert got["clip.mp4"]["codecs"][0] == "h264" and got["clip.mp4"]["duration"] == pytest.approx(1, abs=0.15)
    assert got["tone.wav"]["duration"] == pytest.approx(0.5, abs=0.01)
    assert got["notes.txt"]["lines"] == 3 and got["notes.txt"]["words"] == 9
    assert got["empty"]["size"] == 0 and "error" not in got["empty"]
    assert "sub/blue.png.metadata.json" in ran.files() and "metadata.json" in ran.files()
    assert len(json.loads((ran.out / "metadata.json").read_text())) == 9


def test_image_job_makes_a_thumbnail_and_a_resized_copy(image: str, tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "deep").mkdir(parents=True)
    make_png(src / "wide.png", (800, 400))
    make_png(src / "deep" / "small.png", (30, 10))
    ran = run_job(image, "image-job", src, tmp_path / "out")
    assert ran.code == 0, ran.stderr
    assert ran.files() == ["deep/small.png.resized.jpg", "deep/small.png.thumb.png", "wide.png.resized.jpg",
                           "wide.png.thumb.png"]
    from PIL import Image

    with Image.open(ran.out / "wide.png.thumb.png") as im:
        assert im.size == (128, 64)
    with Image.open(ran.out / "wide.png.resized.jpg") as im:
        assert im.size == (400, 200) and im.format == "JPEG"
    assert ran.by_path()["deep/small.png"]["resized_size"] == [15, 5]


def test_media_job_probes_and_transcodes_a_preview(image: str, inputs: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(inputs / "clip.mp4", src)
    shutil.copy(inputs / "tone.wav", src)
    ran = run_job(image, "media-job", src, tmp_path / "out")
    assert ran.code == 0, ran.stderr
    assert ran.files() == ["clip.mp4.preview.mp4", "clip.mp4.probe.json", "tone.wav.preview.m4a",
                           "tone.wav.probe.json"]
    probe = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_streams",
                            str(ran.out / "clip.mp4.preview.mp4")], capture_output=True, check=True)
    [video] = [s for s in json.loads(probe.stdout)["streams"] if s["codec_type"] == "video"]
    assert (video["codec_name"], video["height"]) == ("h264", 144)
    assert ran.by_path()["tone.wav"]["preview"] == "tone.wav.preview.m4a"


def test_table_job_validates_and_profiles_csv_and_json(image: str, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "people.csv").write_text("name,age,joined\nann,31,2020-01-05\nbob,42,2021-03-01\ncid,27,2019-12-31\n")
    (src / "ragged.csv").write_text("a,b\n1,2\n3\n")
    (src / "scores.json").write_text(json.dumps([{"id": 1, "score": 2.5}, {"id": 2, "score": None},
                                                 {"id": 3, "score": 9.0}]))
    (src / "events.ndjson").write_text('{"at": 1, "kind": "a"}\n{"at": 2, "kind": "b"}\n{"at": 3}\n')
    ran = run_job(image, "table-job", src, tmp_path / "out")
    assert ran.code == 0, ran.stderr
    got = ran.by_path()
    assert got["people.csv"]["valid"] is True and got["people.csv"]["rows"] == 3
    assert (got["events.ndjson"]["rows"], got["events.ndjson"]["columns"]) == (3, 2)
    assert got["ragged.csv"]["valid"] is False and "row 2: 1 fields" in got["ragged.csv"]["errors"][0]
    people = json.loads((ran.out / "people.csv.profile.json").read_text())["fields"]
    assert people[1] == {"name": "age", "type": "integer", "values": 3, "empty": 0, "distinct": 3,
                         "min": 27, "max": 42}
    assert (people[2]["type"], people[2]["min"], people[2]["max"]) == ("date", "2019-12-31", "2021-03-01")
    scores = json.loads((ran.out / "scores.json.profile.json").read_text())
    assert scores["valid"] and scores["rows"] == 3
    assert scores["fields"][1] == {"name": "score", "type": "number", "values": 2, "empty": 1, "distinct": 2,
                                   "min": 2.5, "max": 9.0}


def test_text_job_counts_and_summarises(image: str, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    story = ("Bacalhau is dried and salted cod. Cod is fished in the cold north. The weather was fine. "
             "Salted cod keeps for years, and dried cod travelled with sailors. Nobody asked. "
             "Cod dishes number a thousand in Portugal.\nThe end.\n")
    (src / "cod.txt").write_text(story)
    ran = run_job(image, "text-job", src, tmp_path / "out")
    assert ran.code == 0, ran.stderr
    got = ran.by_path()["cod.txt"]
    assert (got["lines"], got["words"]) == (2, len(story.split()))
    assert len(got["summary"]) == 3 and all(s in story for s in got["summary"])
    assert "Nobody asked." not in got["summary"] and any("cod" in s for s in got["summary"])
    assert (ran.out / "cod.txt.summary.txt").read_text().splitlines() == got["summary"]


def test_merge_gathers_each_parent_under_its_name(image: str, tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "image" / "sub").mkdir(parents=True)
    (src / "image" / "sub" / "a.thumb.png").write_bytes(b"png")
    (src / "text").mkdir()
    (src / "text" / "t.summary.txt").write_text("s\n")
    ran = run_job(image, "merge-job", src, tmp_path / "out")
    assert ran.code == 0, ran.stderr
    assert ran.files() == ["image/sub/a.thumb.png", "index.json", "text/t.summary.txt"]
    assert json.loads((ran.out / "index.json").read_text()) == {"image": ["sub/a.thumb.png"],
                                                               "text": ["t.summary.txt"]}


def test_a_single_file_cid_is_handled_by_its_content_not_its_name(image: str, tmp_path: Path) -> None:
    """A CID may be one file: the node mounts it as /inputs/<CID>, a name without an extension."""
    src = tmp_path / "in"
    src.mkdir()
    name = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
    make_png(src / name)
    ran = run_job(image, "image-job", src, tmp_path / "out")
    assert ran.code == 0, ran.stderr
    assert ran.files() == [f"{name}.resized.jpg", f"{name}.thumb.png"]


async def test_a_step_runs_as_a_cluster_job_over_the_selected_files(single_node: Node, image: str,
                                                                    tmp_path: Path) -> None:
    """What the engine does per node: select the parent's image files into a CID, run the image step on it as
    an ordinary job through the node's API, and its published result holds a thumbnail per image."""
    src = fixtures(tmp_path / "in")
    cid = cid_to_bytes(add_path(src, single_node.blockstore.put)[-1][0])
    chosen = await select_files(single_node.content, cid, "image/*")
    assert chosen is not None
    res = await run_cli(single_node, "docker", "run", "-i", f"ipfs://{cid_str(chosen)}:/inputs",
                        "--entrypoint", " ".join(entrypoint("image-job")), "--memory", "1Gi", image)
    assert res.returncode == 0, res.stderr
    lines = {r["path"]: r for r in map(json.loads, res.stdout.splitlines())}
    assert sorted(lines) == ["red.png", "sub/blue.png"]
    [listed] = json.loads((await run_cli(single_node, "list", "-o", "json")).stdout)
    job = json.loads((await run_cli(single_node, "describe", "-o", "json", listed["id"])).stdout)
    result = job["executions"][-1]["result_ref"].removeprefix("ipfs://")
    made = sorted(f.path for f in await describe_files(single_node.content, cid_to_bytes(result)))
    assert [p for p in made if p.startswith("outputs/")] == [
        "outputs/red.png.resized.jpg", "outputs/red.png.thumb.png",
        "outputs/sub/blue.png.resized.jpg", "outputs/sub/blue.png.thumb.png"]


def test_the_default_workflow_names_only_scripts_the_image_holds(image: str) -> None:
    """Each step's entrypoint is a script of docker/amplify (and in the image), each `when` a pattern
    select_files takes, and merge mounts every step that produces something."""
    from bacalhau.amplify.content import check_mime_pattern

    workflow = yaml.safe_load(DEFAULT.read_text())
    scripts = Path(__file__).resolve().parent.parent / "docker" / "amplify"
    listed = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "ls", image,
                             "/usr/local/lib/amplify"], capture_output=True, text=True, check=True).stdout.split()
    for job in workflow["jobs"]:
        if job.get("type") == "internal":
            continue
        python, script = job["entrypoint"]
        name = script.rsplit("/", 1)[-1]
        assert python == "python3" and (scripts / name).is_file() and name in listed, job["id"]
    steps = set()
    for node in workflow["graph"]:
        if "when" in node:
            check_mime_pattern(node["when"]["mime"])
        if node["id"] not in ("root-node", "merge-node"):
            steps.add(node["id"])
    [merge] = [n for n in workflow["graph"] if n["id"] == "merge-node"]
    assert {i["node_id"] for i in merge["inputs"]} == steps


def test_the_image_is_built_once_for_the_same_content(image: str) -> None:
    """setup-amplify.sh is cached by the Docker engine: the image with the same content hash is not built again
    (the first call here may rebuild the scripts' layer if they changed since)."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "setup-amplify.sh"
    first = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600, check=False)
    assert first.returncode == 0, first.stderr
    before = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", image], capture_output=True,
                            text=True, check=True).stdout
    again = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0 and "building" not in again.stderr, again.stderr
    assert subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", image], capture_output=True,
                          text=True, check=True).stdout == before
