"""Projects: creating one, finding it the way git finds a repository, its settings file, and
the Python door (`whetstone.open()`, `p.capture`, `p.correct`, ...) on both store backends."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import whetstone
from whetstone.errors import InvalidInput, NotFound, StoreError
from whetstone.project import CONFIG_NAME, HOME_NAME, Project
from whetstone.records import Status


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's own shell must not steer which project or store a test sees.
    monkeypatch.delenv("WHETSTONE_PROJECT", raising=False)
    monkeypatch.delenv("WHETSTONE_DB", raising=False)


def write_config(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / HOME_NAME).mkdir(exist_ok=True)
    path = root / CONFIG_NAME
    path.write_text(text)
    return path


# ---- init ------------------------------------------------------------------------------
def test_init_creates_settings_home_and_store(tmp_path: Path) -> None:
    p = whetstone.init(str(tmp_path / "proj"), base_model="my/model")
    root = (tmp_path / "proj").resolve()
    assert p.root == root
    assert (root / HOME_NAME).is_dir()
    assert (root / HOME_NAME / "whetstone.db").is_file()  # created now, not on first use
    cfg = yaml.safe_load((root / CONFIG_NAME).read_text())
    assert cfg["base_model"] == "my/model" == p.base_model
    assert "db" not in cfg
    assert p.store.list_tasks() == []
    p.close()


def test_init_twice_is_refused(tmp_path: Path) -> None:
    whetstone.init(str(tmp_path)).close()
    with pytest.raises(InvalidInput, match=re.escape(f"{CONFIG_NAME} already exists")):
        whetstone.init(str(tmp_path))


def test_init_with_a_db_writes_it_into_the_settings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    p = whetstone.init(str(tmp_path / "proj"), db=url)
    assert yaml.safe_load(p.config_path.read_text())["db"] == url
    assert (tmp_path / "elsewhere.db").is_file()
    assert not (p.home / "whetstone.db").exists()
    p.close()


# ---- finding ---------------------------------------------------------------------------
def test_find_from_a_sub_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whetstone.init(str(tmp_path / "proj")).close()
    deep = tmp_path / "proj" / "data" / "raw"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert whetstone.open().root == (tmp_path / "proj").resolve()


def test_find_outside_any_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotFound, match=r"no Whetstone project in .* or its parents"):
        whetstone.open()


def test_explicit_folder_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = whetstone.init(str(tmp_path / "a"))
    b = whetstone.init(str(tmp_path / "b"))
    a.close()
    b.close()
    monkeypatch.chdir(tmp_path / "a")
    assert Project.find(tmp_path / "b").root == b.root  # --project DIR beats the current folder
    monkeypatch.setenv("WHETSTONE_PROJECT", str(tmp_path / "b"))
    assert Project.find().root == b.root  # so does WHETSTONE_PROJECT
    assert Project.find(tmp_path / "a").root == a.root  # and --project beats the variable


def test_explicit_folder_is_not_searched_upwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whetstone.init(str(tmp_path)).close()
    (tmp_path / "sub").mkdir()
    with pytest.raises(NotFound, match=r"no whetstone\.yaml in .*sub \(create one with"):
        Project.find(tmp_path / "sub")
    monkeypatch.setenv("WHETSTONE_PROJECT", str(tmp_path / "sub"))
    with pytest.raises(NotFound, match=r"no whetstone\.yaml in"):
        Project.find()


# ---- settings --------------------------------------------------------------------------
def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, "base_model: x\ntrain:\n  epochs: [1, 2\n  lr: 1\n")
    with pytest.raises(InvalidInput) as e:
        Project.find(tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:4: not valid YAML")
    assert "\n" not in msg


def test_unknown_setting_is_named(tmp_path: Path) -> None:
    path = write_config(tmp_path, "base_model: x\nbase_modle: y\n")
    with pytest.raises(
        InvalidInput, match=re.escape(f"{path}: unknown setting 'base_modle' (known: ")
    ):
        Project.find(tmp_path)


def test_a_section_nothing_reads_is_refused(tmp_path: Path) -> None:
    # `whetstone eval` takes its settings as options and the gate reads `gate:`: an
    # `evaluate:` section would be ignored, so it is refused with the file and key named.
    path = write_config(tmp_path, "base_model: x\nevaluate:\n  max_new_tokens: 64\n")
    with pytest.raises(InvalidInput, match=re.escape(f"{path}: unknown setting 'evaluate'")):
        Project.find(tmp_path)


def test_settings_must_be_a_mapping(tmp_path: Path) -> None:
    write_config(tmp_path, "- just\n- a list\n")
    with pytest.raises(InvalidInput, match="expected a mapping of settings"):
        Project.find(tmp_path)
    write_config(tmp_path, "train: 3\n")
    with pytest.raises(InvalidInput, match="`train` must be a mapping"):
        Project.find(tmp_path).section("train")


def test_an_empty_settings_file_means_the_defaults(tmp_path: Path) -> None:
    write_config(tmp_path, "")
    p = Project.find(tmp_path)
    assert p.base_model == "smollm2-135m-instruct"
    assert p.db_url == f"sqlite:///{p.home / 'whetstone.db'}"


def test_db_in_settings_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    in_yaml = tmp_path / "from-yaml.db"
    write_config(tmp_path / "proj", f"db: sqlite:///{in_yaml}\n")
    p = Project.find(tmp_path / "proj")
    p.create_task("t", "generate")
    p.close()
    assert in_yaml.is_file()
    assert not (tmp_path / "proj" / HOME_NAME / "whetstone.db").exists()
    # WHETSTONE_DB beats the file, --db beats both.
    monkeypatch.setenv("WHETSTONE_DB", f"sqlite:///{tmp_path / 'from-env.db'}")
    assert Project.find(tmp_path / "proj").db_url.endswith("from-env.db")
    flag = Project.find(tmp_path / "proj", db=f"sqlite:///{tmp_path / 'flag.db'}")
    assert flag.db_url.endswith("flag.db")


def test_unreachable_db_in_settings_is_a_store_error(tmp_path: Path) -> None:
    write_config(tmp_path, "db: postgresql://nobody@127.0.0.1:1/nothing\n")
    p = Project.find(tmp_path)  # finding reads settings only; the store opens on first use
    with pytest.raises(StoreError, match="cannot open the store at postgresql"):
        p.task("anything")


# ---- the Python door -------------------------------------------------------------------
def test_python_door_on_each_backend(tmp_path: Path, store_url: str) -> None:
    whetstone.init(str(tmp_path), db=store_url).close()
    p = whetstone.open(str(tmp_path))
    p.create_task("tickets", "classify", labels=["billing", "shipping"], instruction="Route it.")
    assert p.task("tickets").instruction == "Route it."

    wrong = p.capture("tickets", "parcel lost", "billing", model="tickets@1", confidence=0.3)
    right = p.capture("tickets", "card declined", "billing", model="tickets@1")
    junk = p.capture("tickets", "asdf", "shipping")

    rec = p.correct(wrong, "shipping", error_category="wrong_label", annotator="ana")
    assert (rec.output, rec.reference, rec.status) == ("billing", "shipping", Status.corrected)
    assert p.accept(right, annotator="bo").reference == "billing"
    assert p.reject(junk, comment="noise").status == Status.rejected
    assert [r.id for r in p.records("tickets", has_reference=True)] == [wrong, right]
    assert p.record(wrong).history[0].annotator == "ana"
    p.close()


def test_python_door_errors(project: Project) -> None:
    with pytest.raises(InvalidInput, match=r"unknown task kind 'regress' \(choose from generate"):
        project.create_task("t", "regress")
    with pytest.raises(InvalidInput, match="task name: task names use letters"):
        project.create_task("bad name!", "generate")
    with pytest.raises(InvalidInput, match="not a valid JSON Schema"):
        project.create_task("e", "extract", schema={"type": "no-such-type"})
    with pytest.raises(NotFound, match="unknown task 'nope'"):
        project.capture("nope", "x")
    with pytest.raises(NotFound, match="unknown record 42"):
        project.correct(42, "x")
    assert project.store.list_tasks() == []
