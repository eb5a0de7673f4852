"""The trust model of import paths: a config is data unless the user says otherwise.

An import path resolves only to a declared tricklab part (``@tricklab.model`` / ``dataset`` / ``callback``, a
registration, an entry point), never to any function of any module; an import path read from a file (a config, a
study, a run folder's config.yaml) must also name a module the user allowed, and nothing is imported before
that check.
"""

from __future__ import annotations

import importlib.abc
import itertools
import shutil
import string
import sys
import tempfile
from pathlib import Path

import pytest
import tricklab_testplugin as plug
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tricklab
from tricklab import plugins
from tricklab.catalog import family
from tricklab.config import load_config
from tricklab.errors import MAX_MESSAGE, ConfigError, TrickLabError
from tricklab.lab.studies import load_custom_study
from tricklab.plugins import ALLOW_ENV, NotAllowedError

SMALL = "tricklab_testplugin:small_mlp"
_names = itertools.count()


@pytest.fixture(autouse=True)
def nothing_allowed(monkeypatch):
    """No module allowed but tricklab's own, whatever the environment or another test allowed."""
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.setattr(plugins, "_allowed", frozenset({"tricklab"}))


@pytest.fixture
def tripwire(tmp_path, monkeypatch):
    """A fresh module on sys.path whose import writes a marker file: ``(module name, marker path)``. It also
    declares a model ``net``, so that once allowed it is a valid plugin."""
    name = f"tripwire_{next(_names)}"
    marker = tmp_path / f"{name}.imported"
    folder = tmp_path / "mods"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "from tricklab_testplugin import small_mlp as net\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    yield name, marker
    sys.modules.pop(name, None)


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg and len(msg) <= MAX_MESSAGE, msg
    return msg


# --- 1. only declared parts ---------------------------------------------------------------------------------

ATTACKS = [
    ("data", "subprocess:getoutput", {"cmd": "touch {marker}"}),
    ("data", "os:system", {"command": "touch {marker}"}),
    ("model", "builtins:eval", {}),
    ("model", "torch:load", {}),
    ("callbacks", "os:system", {"command": "touch {marker}"}),
    ("callbacks", "subprocess:getoutput", {"cmd": "touch {marker}"}),
]


def attack_config(section: str, path: str, kwargs: dict, marker: Path) -> dict:
    kwargs = {k: v.format(marker=marker) for k, v in kwargs.items()}
    if section == "callbacks":
        return {"callbacks": [{"name": path, "kwargs": kwargs}]}
    return {section: {"name": path, "kwargs": kwargs}}


@pytest.mark.parametrize(("section", "path", "kwargs"), ATTACKS)
def test_any_function_of_any_module_is_refused_even_from_the_users_own_python(section, path, kwargs, tmp_path):
    """Named by the user (a Python dict), the module is trusted, but the function is not a tricklab part."""
    marker = tmp_path / "owned.txt"
    with pytest.raises(ConfigError) as info:
        tricklab.run(attack_config(section, path, kwargs, marker), write=False)
    key = "callbacks.name" if section == "callbacks" else f"{section}.name"
    assert info.value.key == key and info.value.value == path
    kind = {"data": "dataset", "model": "model", "callbacks": "callback"}[section]
    assert f"not a declared tricklab {kind}" in one_line(info.value)
    assert f"@tricklab.{kind}" in str(info.value)
    assert not marker.exists()


def test_an_allowed_module_does_not_make_its_undeclared_functions_callable(tmp_path, monkeypatch):
    monkeypatch.setenv(ALLOW_ENV, "tricklab_testplugin,os,subprocess")
    for path in ("tricklab_testplugin:undeclared_mlp", "os:system"):
        cfg = write_yaml(tmp_path / "c.yaml", {"model": {"name": path}})
        with pytest.raises(ConfigError, match="not a declared tricklab model"):
            load_config(cfg)
    # the declared factory of the same module is accepted
    assert load_config(write_yaml(tmp_path / "ok.yaml", {"model": {"name": SMALL}})).model.name == SMALL


def test_a_declaration_is_per_family_and_not_inherited():
    with pytest.raises(ConfigError, match="not a declared tricklab dataset"):
        load_config(overrides=[f"data.name={SMALL}"])  # a declared model, not a dataset

    class Sub(plug.CountSteps):  # a subclass of a declared callback declares nothing itself
        pass

    assert plugins.declared_families(plug.CountSteps) == {"callbacks"}
    assert plugins.declared_families(Sub) == frozenset()
    assert plugins.declared_families(tricklab.callback(Sub)) == {"callbacks"}


def test_dunder_attributes_that_lead_out_of_a_module_are_refused():
    for path in (f"{SMALL}.__globals__", "tricklab_testplugin:__builtins__.eval", "tricklab_testplugin:np.__loader__"):
        with pytest.raises(ConfigError, match="no __dunder__"):
            load_config(overrides=[f"model.name={path}"])


def test_registered_and_classmethod_factories_are_declared(tmp_path, monkeypatch):
    tricklab.register_model("undeclared_registered", plug.undeclared_mlp)
    try:  # registering by name declares the object: its import path is accepted too
        assert load_config(overrides=["model.name=tricklab_testplugin:undeclared_mlp"]).model.width is None
    finally:
        family("models").unregister("undeclared_registered")

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "cls_factories.py").write_text(
        "import tricklab\nfrom tricklab_testplugin import small_mlp\n\n"
        "class Nets:\n    @classmethod\n    @tricklab.model\n    def small(cls, input_shape, num_classes):\n"
        "        return small_mlp(input_shape, num_classes)\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    assert load_config(overrides=["model.name=cls_factories:Nets.small"]).model.name == "cls_factories:Nets.small"


def test_lab_workers_accept_a_path_declared_only_by_registration_here(tmp_path):
    """A worker process imports the module afresh, without the registration this process made: the lab sends it."""
    from tricklab.catalog import family

    tricklab.register_model("undeclared_registered", plug.undeclared_mlp)
    study = {
        "name": "reg",
        "dataset": "tricklab_testplugin:blobs",
        "base": {"model": {"name": "tricklab_testplugin:undeclared_mlp"}, "train": {"epochs": 1, "threads": 1}},
        "variants": {"a": {}, "b": {"optim.lr": 0.01}},
    }
    try:
        lab = tricklab.run_lab(study, seeds=1, workers=1, out=tmp_path / "lab")
    finally:
        family("models").unregister("undeclared_registered")
    assert "worker processes" in lab.executor
    assert (lab.done, lab.failed) == (2, 0)


def test_decorators_refuse_what_they_cannot_mark():
    with pytest.raises(TrickLabError, match="@tricklab.model: got a int"):
        tricklab.model(42)
    with pytest.raises(TrickLabError, match="cannot mark a builtin_function_or_method"):
        tricklab.dataset(len)


# --- 2. a file's import paths: only allowed modules, nothing imported before the check -----------------------


def test_a_config_file_naming_a_module_not_allowed_imports_nothing(tripwire, tmp_path):
    name, marker = tripwire
    cfg = write_yaml(tmp_path / "cfg.yaml", {"model": {"name": f"{name}:net"}})
    with pytest.raises(NotAllowedError) as info:
        load_config(cfg)
    msg = one_line(info.value)
    assert info.value.key == "model.name" and f"names module {name!r}, which is not allowed" in msg
    assert f"--allow-module {name}" in msg and f"{ALLOW_ENV}={name}" in msg and "runs its code" in msg
    assert str(cfg) in msg
    assert not marker.exists() and name not in sys.modules


@pytest.mark.parametrize(
    "where",
    ["data.name", "callbacks", "study.dataset", "study.base", "study.variant", "study.variant.dotted"],
)
def test_every_place_a_file_names_a_plugin_is_checked(where, tripwire, tmp_path):
    name, marker = tripwire
    path = f"{name}:net"
    if where == "data.name":
        load = lambda p: load_config(p)  # noqa: E731
        data = {"data": {"name": path}}
    elif where == "callbacks":
        load = lambda p: load_config(p)  # noqa: E731
        data = {"callbacks": [{"name": path}]}
    else:
        load = load_custom_study
        data = {"name": "s", "dataset": "synthetic", "variants": {"a": {}, "b": {}}}
        if where == "study.dataset":
            data["dataset"] = path
        elif where == "study.base":
            data["base"] = {"model": {"name": path}}
        elif where == "study.variant":
            data["variants"]["b"] = {"callbacks": [{"name": path}]}
        else:
            data["variants"]["b"] = {"model.name": path}
    with pytest.raises(NotAllowedError, match=f"names module '{name}'"):
        load(write_yaml(tmp_path / "f.yaml", data))
    assert not marker.exists() and name not in sys.modules


def test_a_received_run_folder_is_refused_on_resume(tripwire, tmp_path, capsys):
    """A run folder someone sends (config.yaml edited to name their module) is refused by --resume."""
    from tricklab.cli.main import main
    from tricklab.runner import stored_config

    name, marker = tripwire
    run = tmp_path / "received"
    tricklab.run({"data.name": "synthetic", "model.width": 8, "train.epochs": 1, "train.threads": 1}, out=run)
    stored = yaml.safe_load((run / "config.yaml").read_text())
    stored["model"]["name"] = f"{name}:net"
    write_yaml(run / "config.yaml", stored)
    with pytest.raises(TrickLabError, match=f"--resume '{run}': model.name = '{name}:net': config file"):
        stored_config(run)
    assert main(["train", "--resume", str(run)]) == 2
    assert f"names module {name!r}, which is not allowed" in capsys.readouterr().err
    assert not marker.exists() and name not in sys.modules


def test_allowing_a_module_by_env_by_python_or_by_flag_covers_its_submodules_only(tripwire, tmp_path, monkeypatch):
    name, marker = tripwire
    cfg = write_yaml(tmp_path / "cfg.yaml", {"model": {"name": f"{name}:net"}, "data": {"name": "synthetic"}})
    monkeypatch.setenv(ALLOW_ENV, f"{name}x, other")  # a prefix of the name is not the module
    with pytest.raises(NotAllowedError):
        load_config(cfg)
    assert not marker.exists()
    monkeypatch.setenv(ALLOW_ENV, f"other,{name}")
    assert load_config(cfg).model.name == f"{name}:net" and marker.exists()
    monkeypatch.delenv(ALLOW_ENV)
    tricklab.allow_modules("tricklab_testplugin")  # a package covers its submodules; the fixture resets it
    assert plugins.is_allowed("tricklab_testplugin.sub") and not plugins.is_allowed("tricklab_testplugin2")
    assert not plugins.is_allowed(name)


def test_only_names_are_checked_not_a_plugins_own_arguments():
    data = {"model": {"name": "a.b:f", "kwargs": {"name": "x:y"}}, "variants": {"v": {"data.kwargs": {"name": "p:q"}}}}
    data["variants"]["v"]["callbacks"] = [{"name": "c:d", "kwargs": {"dataset": "r:s"}}]
    found = list(plugins.import_paths_in(data))
    assert found == [("model.name", "a.b:f"), ("variants.v.callbacks[0].name", "c:d")]


@pytest.mark.parametrize("bad", ["", "a b", "../x", ".rel", "x:y", "1abc"])
def test_allow_lists_take_module_names_only(bad, monkeypatch):
    with pytest.raises(TrickLabError, match="must be a module name"):
        tricklab.allow_modules(bad)
    if bad.strip():
        monkeypatch.setenv(ALLOW_ENV, bad)
        with pytest.raises(TrickLabError, match=f"environment variable {ALLOW_ENV}"):
            plugins.allowed_modules()


def test_the_users_own_command_line_and_python_are_trusted(tripwire, tmp_path, capsys):
    from tricklab.cli.main import main

    name, marker = tripwire
    out = tmp_path / "run"
    args = ["train", "--set", f"model.name={name}:net", "--set", "data.name=synthetic", "--set", "train.epochs=1"]
    args += ["--set", "train.threads=1", "--set", "checkpoint.every=1", "--out", str(out)]
    assert main(args) == 0 and marker.exists()
    assert plugins._allowed == frozenset({"tricklab"})  # trusting the command line lasts one command
    # the run folder restates the user's own --set: resuming with it is allowed, without it refused
    assert main(["train", "--resume", str(out), "--set", f"model.name={name}:net"]) == 0
    assert main(["train", "--resume", str(out)]) == 2
    assert "--allow-module" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--allow-module", name]) == 0


# --- 3. plugin modules that misbehave at import --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("raise SystemExit(7)", "SystemExit: 7"),
        ("raise KeyboardInterrupt('no')", "KeyboardInterrupt: no"),
        ("class Odd(BaseException): pass\nraise Odd('odd')", "Odd: odd"),
        ("import no_such_dependency_xyz", "module 'no_such_dependency_xyz' not found"),
    ],
)
def test_a_module_that_raises_anything_at_import_is_a_one_line_error_naming_it(body, words, tmp_path, monkeypatch):
    name = f"raiser_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(body + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[f"model.name={name}:f"])
    assert info.value.key == "model.name" and f"{name!r}" in one_line(info.value) and words in str(info.value)


# --- fuzz: any name from a file ends in a declared part or one line, and imports nothing not allowed ----------

BUDGET = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class ImportSpy(importlib.abc.MetaPathFinder):
    """Records every module Python is asked to import (and finds none itself)."""

    def __init__(self):
        self.asked: list[str] = []

    def find_spec(self, fullname, path=None, target=None):
        self.asked.append(fullname)
        return None


identifier = st.text(string.ascii_lowercase + "_", min_size=1, max_size=8).map(lambda s: f"zz{s}")
module = st.lists(identifier, min_size=1, max_size=3).map(".".join)
dangerous = st.sampled_from(
    ["os:system", "subprocess:getoutput", "builtins:eval", "torch:load", "pickle:loads", "shutil:rmtree",
     SMALL, "tricklab_testplugin:blobs", "tricklab_testplugin:CountSteps", "tricklab_testplugin:undeclared_mlp",
     "tricklab.models.mlp:mlp", "tricklab.plugins:allow_modules", "mlp", "synthetic"]
)
names = st.one_of(
    st.text(max_size=40),
    st.builds(lambda m, a: f"{m}:{a}", module, st.text(max_size=12)),
    st.builds(lambda m, a: f"{m}:{a}", st.text(max_size=12), st.text(max_size=12)),
    dangerous,
)
allowed_sets = st.lists(st.sampled_from(["tricklab_testplugin", "os", "subprocess", "zzab"]), max_size=2)


@pytest.fixture(scope="module")
def scratch():
    folder = Path(tempfile.mkdtemp(prefix="tricklab-trust-fuzz-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@BUDGET
@given(name=names, where=st.sampled_from(["model", "data", "callbacks"]), allowed=allowed_sets)
def test_fuzz_any_name_from_a_file_is_a_declared_part_or_one_line(name, where, allowed, scratch, monkeypatch):
    monkeypatch.setenv(ALLOW_ENV, ",".join(allowed))
    data = {"callbacks": [{"name": name}]} if where == "callbacks" else {where: {"name": name}}
    path = scratch / f"c{next(_names)}.yaml"
    write_yaml(path, data)
    spy = ImportSpy()
    before = set(sys.modules)
    sys.meta_path.insert(0, spy)
    try:
        cfg = load_config(path)
    except TrickLabError as e:
        one_line(e)
        cfg = None
    finally:
        sys.meta_path.remove(spy)
    new = set(sys.modules) - before
    tried = {m for m in spy.asked if m not in before}
    for m in tried | new:  # torch or numpy submodules a validation loads lazily are not plugin modules
        assert plugins.is_allowed(m) or m.split(".")[0] in ("torch", "numpy", "tricklab_testplugin"), (name, m)
        if m.split(".")[0] == "tricklab_testplugin":
            assert "tricklab_testplugin" in allowed, (name, m)
    if cfg is not None and plugins.is_import_path(name):
        resolved = {"model": cfg.model.name, "data": cfg.data.name}.get(where) or cfg.callbacks[0].name
        assert resolved == name
        fam = {"model": "models", "data": "datasets", "callbacks": "callbacks"}[where]
        assert plugins.is_declared(plugins.import_object(name, "x"), fam, family(fam))
