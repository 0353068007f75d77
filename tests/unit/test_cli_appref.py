"""``-A/--app``: each way a Celery user names an app resolves; each mistake says what to do."""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.cli.appref import find_app
from conveyor.exceptions import ConfigurationError

Project = Callable[[dict[str, str]], str]


def app_source(name: str = "app", main: str = "proj") -> str:
    return f"{name} = Conveyor({main!r}, broker='memory://unit-appref')\n"


IMPORT = "from conveyor import Conveyor\n"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    """Write a package with a unique name into tmp_path (the current directory), as a user's
    project; returns the package name. Its modules are forgotten after the test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    packages: list[str] = []

    def write(files: dict[str, str]) -> str:
        package = f"unit_proj_{uuid.uuid4().hex[:8]}"
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(files.pop("__init__.py", ""))
        for relative, source in files.items():
            path = tmp_path / package / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source)
        importlib.invalidate_caches()
        packages.append(package)
        return package

    yield write
    for name in list(sys.modules):
        if name.split(".")[0] in packages:
            del sys.modules[name]


def loaded(module: str, attr: str = "app") -> Conveyor:
    app: Conveyor = getattr(sys.modules[module], attr)
    return app


# --- the forms that resolve ----------------------------------------------------------------------


def test_a_module_resolves_to_its_app_attribute(project: Project) -> None:
    # Given a module defining `app`
    pkg = project({"tasks.py": IMPORT + app_source("app")})

    # When it is named alone, Then its app is found
    assert find_app(f"{pkg}.tasks") is loaded(f"{pkg}.tasks")


def test_a_module_resolves_to_its_celery_attribute(project: Project) -> None:
    pkg = project({"tasks.py": IMPORT + app_source("celery") + "other = 1\n"})
    assert find_app(f"{pkg}.tasks") is loaded(f"{pkg}.tasks", "celery")


def test_a_module_resolves_to_its_only_app_whatever_its_name(project: Project) -> None:
    pkg = project({"tasks.py": IMPORT + app_source("my_queue")})
    assert find_app(f"{pkg}.tasks") is loaded(f"{pkg}.tasks", "my_queue")


def test_module_colon_attribute_names_the_app(project: Project) -> None:
    # Given a module with two apps
    pkg = project({"tasks.py": IMPORT + app_source("first") + app_source("second")})

    # When one is named with MODULE:ATTR, Then that one is found
    assert find_app(f"{pkg}.tasks:second") is loaded(f"{pkg}.tasks", "second")


def test_module_colon_dotted_attribute_reaches_into_an_object(project: Project) -> None:
    # Given an app held by an attribute of an object in the module
    pkg = project(
        {
            "factory.py": IMPORT
            + "class Holder:\n    pass\n\nholder = Holder()\n"
            + "holder.queue = Conveyor('proj', broker='memory://unit-appref')\n"
        }
    )

    # When it is named MODULE:attr.sub, Then it is found
    found = find_app(f"{pkg}.factory:holder.queue")
    assert found is sys.modules[f"{pkg}.factory"].holder.queue


def test_a_package_resolves_to_the_app_in_its_celery_module(project: Project) -> None:
    # Given the Celery layout: proj/celery.py defines the app, proj/__init__.py does not
    pkg = project({"celery.py": IMPORT + app_source("app"), "tasks.py": ""})

    # When the package is named, Then the app of proj.celery is found
    assert find_app(pkg) is loaded(f"{pkg}.celery")


def test_a_package_that_imports_its_app_resolves_to_it(project: Project) -> None:
    # Given proj/__init__.py re-exporting the app of proj/celery.py (Celery's docs suggest it)
    pkg = project(
        {"__init__.py": "from .celery import app\n", "celery.py": IMPORT + app_source("app")}
    )
    assert find_app(pkg) is loaded(f"{pkg}.celery")


def test_a_dotted_path_to_an_attribute_resolves_as_module_colon_attribute(
    project: Project,
) -> None:
    # Given a module with two apps (so only naming one can work)
    pkg = project({"tasks.py": IMPORT + app_source("first") + app_source("second")})

    # When the app is named pkg.mod.attr, as `celery -A` allows
    found = find_app(f"{pkg}.tasks.second")

    # Then it is the module's attribute
    assert found is loaded(f"{pkg}.tasks", "second")


def test_a_module_in_the_current_directory_is_importable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a top-level module in the current directory, which is not yet on sys.path
    name = f"unit_cwd_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(IMPORT + app_source("app"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    importlib.invalidate_caches()

    try:
        # When it is named, Then it is found, as with `celery -A`
        assert find_app(name) is loaded(name)
    finally:
        sys.modules.pop(name, None)


# --- the mistakes ------------------------------------------------------------------------------


def test_a_module_with_two_apps_asks_for_the_attribute_form(project: Project) -> None:
    # Given a module with two apps and neither called app nor celery
    pkg = project({"tasks.py": IMPORT + app_source("first") + app_source("second")})

    # When the module alone is named, Then the error says to name one with MODULE:ATTR
    with pytest.raises(ConfigurationError, match=rf"several apps; name one with {pkg}\.tasks:ATTR"):
        find_app(f"{pkg}.tasks")


def test_an_attribute_called_app_wins_over_other_apps(project: Project) -> None:
    pkg = project({"tasks.py": IMPORT + app_source("other") + app_source("app")})
    assert find_app(f"{pkg}.tasks") is loaded(f"{pkg}.tasks", "app")


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param("unit_no_such_pkg_x1", id="top-level"),
        pytest.param("unit_no_such_pkg_x1.tasks", id="dotted"),
        pytest.param("unit_no_such_pkg_x1.tasks:app", id="with-attribute"),
    ],
)
def test_a_missing_module_is_one_clear_configuration_error(project: Project, spec: str) -> None:
    # When a module that does not exist is named
    with pytest.raises(ConfigurationError) as caught:
        find_app(spec)

    # Then one error names what could not be imported, with nothing chained to it
    message = str(caught.value)
    assert message.startswith("cannot import ")
    assert "no module named 'unit_no_such_pkg_x1'" in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ or caught.value.__context__ is None


def test_a_missing_module_inside_an_existing_package_is_named(project: Project) -> None:
    # Given a package without a `worker` module
    pkg = project({"tasks.py": IMPORT + app_source("app")})

    # When pkg.worker is named, Then the error names the missing module
    with pytest.raises(ConfigurationError, match=rf"no module named '{pkg}\.worker'"):
        find_app(f"{pkg}.worker")


def test_an_import_error_inside_the_users_module_is_not_hidden(project: Project) -> None:
    # Given a module that imports a dependency that is not installed
    pkg = project({"tasks.py": "import unit_missing_dependency_x2\n"})

    # When it is named, Then the real ModuleNotFoundError surfaces, naming the dependency
    with pytest.raises(ModuleNotFoundError, match="unit_missing_dependency_x2"):
        find_app(f"{pkg}.tasks")


def test_an_attribute_that_is_not_an_app_is_refused(project: Project) -> None:
    # Given a module attribute that is not an app
    pkg = project({"tasks.py": "app = 'not an app'\n"})

    # When it is named, Then the error says what it is instead
    with pytest.raises(ConfigurationError, match=rf"{pkg}\.tasks:app is a str, not a Conveyor app"):
        find_app(f"{pkg}.tasks:app")


def test_a_missing_attribute_is_named(project: Project) -> None:
    pkg = project({"tasks.py": IMPORT + app_source("app")})
    with pytest.raises(ConfigurationError, match=rf"{pkg}\.tasks has no attribute 'nope'"):
        find_app(f"{pkg}.tasks:nope")


def test_a_module_without_an_app_suggests_the_attribute_form(project: Project) -> None:
    # Given a module and package with no app anywhere (and no celery module)
    pkg = project({"tasks.py": "x = 1\n"})

    # When either is named, Then the error suggests MODULE:ATTR
    with pytest.raises(ConfigurationError, match=rf"no conveyor app found in '{pkg}\.tasks'"):
        find_app(f"{pkg}.tasks")
    with pytest.raises(ConfigurationError, match=rf"use -A {pkg}:ATTR"):
        find_app(pkg)
