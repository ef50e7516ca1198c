"""The two images, read without Docker (none here): each installs only its group, runs as non-root in exec form,
copies only what exists and what the build context holds, and pins the uv the scripts install."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import PurePosixPath

import pytest

from tests.images.dockerfiles import Stage, copy_arguments, env_values, exec_form, sent_to_docker, stages
from tests.images.environments import sync_command
from tests.receiver.server import ROOT

DOCKERIGNORE = ROOT / ".dockerignore"
# Each image and the one dependency group it installs.
IMAGES = {"Dockerfile": "receiver", "dagster.Dockerfile": "pipeline"}


def final_stage(dockerfile: str) -> Stage:
    return stages(ROOT / dockerfile)[-1]


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_the_image_runs_as_a_non_root_user_set_before_an_exec_form_cmd(dockerfile: str) -> None:
    stage = final_stage(dockerfile)
    [user] = stage.all("USER")
    assert user.split(":")[0] not in ("root", "0")
    assert 0 <= stage.index("USER") < stage.index("CMD")
    # The user exists: the stage creates it before switching to it.
    assert any(re.search(rf"\buseradd\b.*\s{re.escape(user)}(\s|$)", run) for run in stage.all("RUN"))
    [cmd] = stage.all("CMD")
    assert exec_form(cmd) is not None, f"{dockerfile}: CMD in shell form: {cmd}"
    assert stage.all("ENTRYPOINT") == []


@pytest.mark.parametrize(("dockerfile", "group"), IMAGES.items())
def test_the_image_installs_only_its_own_dependency_group_from_the_lock(dockerfile: str, group: str) -> None:
    runs = [run for stage in stages(ROOT / dockerfile) for run in stage.all("RUN") if "uv sync" in run]
    [sync] = runs
    words = shlex.split(sync)
    assert words[: len(sync_command(group))] == sync_command(group)
    groups = [words[n + 1] for n, word in enumerate(words) if word == "--group"]
    assert groups == [group]
    assert not {"--all-groups", "--dev", "--only-group", "--extra", "--all-extras"} & set(words)


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_the_image_runs_the_environment_its_build_stage_installed_at_the_same_path(dockerfile: str) -> None:
    build, final = stages(ROOT / dockerfile)
    venv = env_values(build)["UV_PROJECT_ENVIRONMENT"]
    # Console scripts name their interpreter by absolute path: the copy must land where uv installed it.
    copies = [copy_arguments(arguments) for arguments in final.all("COPY")]
    [(_, sources, destination)] = [copy for copy in copies if copy[0].get("from") == build.name]
    [workdir] = final.all("WORKDIR")
    assert (sources, str(PurePosixPath(workdir) / destination)) == ([venv], venv)
    assert env_values(final)["PATH"].split(":")[0] == f"{venv}/bin"
    assert build.base == final.base  # the same Python at the same path as the environment was built with


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_every_copied_path_exists_and_is_in_the_build_context(dockerfile: str) -> None:
    sources = [
        source
        for stage in stages(ROOT / dockerfile)
        for flags, copied, _ in map(copy_arguments, stage.all("COPY"))
        if "from" not in flags
        for source in copied
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile}: COPY {source}: no such path"
        assert sent_to_docker(source, DOCKERIGNORE), f"{dockerfile}: COPY {source}: excluded by .dockerignore"


def test_the_build_context_holds_only_what_the_images_copy() -> None:
    copied = {
        source
        for dockerfile in IMAGES
        for stage in stages(ROOT / dockerfile)
        for flags, sources, _ in map(copy_arguments, stage.all("COPY"))
        if "from" not in flags
        for source in sources
    }
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    sent = {path for path in tracked if sent_to_docker(path, DOCKERIGNORE)}
    assert sent == {path for path in tracked if path.split("/")[0] in copied}
    # Untracked local state never enters it either, however large.
    for path in (".venv/bin/python", ".data/landing/x.ndjson", ".cache/bqemulator-venv/x", ".git/HEAD"):
        assert not sent_to_docker(path, DOCKERIGNORE), path
    assert not sent_to_docker("pull_events/__pycache__/landing.cpython-311.pyc", DOCKERIGNORE)


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_the_image_pins_the_uv_the_scripts_install(dockerfile: str) -> None:
    [pinned] = re.findall(r"^UV_VERSION=(\S+)$", (ROOT / "scripts/_uv.sh").read_text(), re.MULTILINE)
    assert re.findall(r"\buv==(\S+)", (ROOT / dockerfile).read_text()) == [pinned]


def test_the_receiver_image_serves_the_receiver_under_its_gunicorn_settings() -> None:
    [cmd] = final_stage("Dockerfile").all("CMD")
    assert exec_form(cmd) == ["gunicorn", "-c", "python:receiver.gunicorn_conf", "receiver:create_app()"]


def test_the_code_location_image_serves_the_module_and_location_name_of_workspace_yaml() -> None:
    argv = exec_form(final_stage("dagster.Dockerfile").all("CMD")[0])
    assert argv is not None and argv[:3] == ["dagster", "code-server", "start"]
    options = dict(zip(argv[3::2], argv[4::2], strict=True))
    workspace = (ROOT / "workspace.yaml").read_text()
    [module] = re.findall(r"module_name: (\S+)", workspace)
    [location] = re.findall(r"location_name: (\S+)", workspace)
    assert (options["-m"], options["--location-name"], options["-h"]) == (module, location, "0.0.0.0")
    assert final_stage("dagster.Dockerfile").all("EXPOSE") == [options["-p"]]
