"""The project's own files a newcomer runs first: the Makefile's targets and what they install."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent


def dry_run(target: str, tmp_path: pathlib.Path) -> str:
    """What ``make TARGET`` would run on a machine without the project's virtualenv."""
    result = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={tmp_path / 'venv'}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_demo_installs_only_the_runtime(tmp_path: pathlib.Path) -> None:
    commands = dry_run("demo", tmp_path)
    assert "pip install --quiet -e ." in commands
    assert "[dev]" not in commands
    assert "[test]" not in commands


def test_make_test_installs_the_dev_extras(tmp_path: pathlib.Path) -> None:
    assert "pip install --quiet -e '.[dev]'" in dry_run("test", tmp_path)


PACKAGES_FILE = ROOT / ".ci" / "debian-packages.txt"


def listed_packages() -> list[str]:
    lines = PACKAGES_FILE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def fake_tools(bin_dir: pathlib.Path, *, uid: int, with_apt: bool = True) -> None:
    """Stand-ins for dpkg-query, apt-get, id and service that record what they are asked."""
    bin_dir.mkdir()
    scripts = {
        "id": f"#!/bin/sh\necho {uid}\n",
        "service": "#!/bin/sh\nexit 0\n",
    }
    if with_apt:
        scripts["dpkg-query"] = (
            "#!/bin/sh\nfor p; do :; done\n"
            'case " $FAKE_MISSING " in *" $p "*) exit 1;; esac\nprintf installed\n'
        )
        scripts["apt-get"] = '#!/bin/sh\necho "$*" >> "$FAKE_LOG"\n'
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    for tool in ("sh", "grep", "tr", "dirname", "env"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")


def install_servers(
    tmp_path: pathlib.Path, *args: str, uid: int, missing: str = "", with_apt: bool = True
) -> tuple[subprocess.CompletedProcess[str], str]:
    bin_dir = tmp_path / "bin"
    fake_tools(bin_dir, uid=uid, with_apt=with_apt)
    log = tmp_path / "apt.log"
    result = subprocess.run(
        ["/bin/sh", str(ROOT / ".ci" / "install-servers"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": str(bin_dir), "FAKE_MISSING": missing, "FAKE_LOG": str(log)},
    )
    return result, log.read_text() if log.exists() else ""


def test_the_package_list_names_every_real_server_the_tests_use() -> None:
    assert set(listed_packages()) >= {
        "nginx",
        "redis-server",
        "memcached",
        "curl",
        "wrk",
        "postgresql",
        "mariadb-server",
    }


def test_ci_and_make_test_install_from_the_one_list() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".ci/install-servers --required" in ci
    assert "redis-server" not in ci  # no second list
    assert "sh .ci/install-servers" in (ROOT / "Makefile").read_text()


def test_install_servers_is_silent_when_everything_is_installed(tmp_path: pathlib.Path) -> None:
    result, apt = install_servers(tmp_path, uid=1000)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert apt == ""


def test_install_servers_as_root_installs_only_what_is_missing(tmp_path: pathlib.Path) -> None:
    result, apt = install_servers(tmp_path, uid=0, missing="nginx memcached")
    assert result.returncode == 0, result.stderr
    assert apt.splitlines() == ["install -y -qq --no-install-recommends nginx memcached"]


def test_install_servers_without_root_prints_one_line_naming_the_fix(
    tmp_path: pathlib.Path,
) -> None:
    result, apt = install_servers(tmp_path, uid=1000, missing="postgresql")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert "not installed: postgresql (their tests are skipped)" in lines[0]
    assert "apt-get install -y postgresql" in lines[0]
    assert apt == ""


def test_install_servers_without_apt_get_prints_one_line(tmp_path: pathlib.Path) -> None:
    result, _ = install_servers(tmp_path, uid=1000, with_apt=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert "no apt-get" in lines[0]
    assert "nginx" in lines[0]


def test_install_servers_required_fails_without_apt_get(tmp_path: pathlib.Path) -> None:
    result, _ = install_servers(tmp_path, "--required", uid=1000, with_apt=False)
    assert result.returncode != 0


def test_make_docs_builds_with_warnings_as_errors(tmp_path: pathlib.Path) -> None:
    commands = dry_run("docs", tmp_path)
    assert "pip install --quiet -e '.[docs]'" in commands
    assert "-m sphinx -W" in commands
    assert "make docs" in (ROOT / ".ci" / "run").read_text()
