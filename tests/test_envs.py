"""The conda environment of the rules (envs/*.yaml, for `snakemake --use-conda`) pins exactly requirements.txt."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503 normalisation


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = PIN.match(line)
            assert m, f"requirements.txt: {line!r} is not an exact pin (name==version)"
            pins[_name(m[1])] = m[2]
    return pins


def env_files() -> list[Path]:
    return sorted((ROOT / "envs").glob("*.yaml"))


def env_pins(path: Path) -> dict[str, str]:
    env = yaml.safe_load(path.read_text())
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    pins = {}
    for spec in (s for group in pip for s in group):
        if spec.startswith("-"):  # `-e ${PAR_SOURCE}`: this checkout, not a pin
            continue
        m = PIN.match(spec)
        assert m, f"{path.name}: pip entry {spec!r} is not an exact pin (name==version)"
        pins[_name(m[1])] = m[2]
    return pins


def test_every_rule_env_exists_and_is_referenced():
    envs = {p.name for p in env_files()}
    assert envs, "no conda environment under envs/"
    used = set()
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        used |= {Path(m).name for m in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text())}
    assert used == envs, f"rules name {sorted(used)}, envs/ holds {sorted(envs)}"


def test_env_pins_equal_requirements():
    req = requirement_pins()
    merged = {}
    for path in env_files():
        for name, version in env_pins(path).items():
            assert req.get(name) == version, f"{path.name}: {name}=={version}, requirements.txt: {req.get(name)}"
            merged[name] = version
    assert merged == req, f"missing from envs/: {sorted(set(req) - set(merged))}"


def test_env_python_satisfies_the_package():
    import tomllib

    need = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    floor = tuple(int(x) for x in need.removeprefix(">=").split("."))
    for path in env_files():
        deps = yaml.safe_load(path.read_text())["dependencies"]
        python = [d for d in deps if isinstance(d, str) and d.startswith("python")]
        assert python, f"{path.name}: no python version"
        version = tuple(int(x) for x in re.split(r"[=<>]+", python[0])[1].split(".")[:2])
        assert version >= floor[:2], f"{path.name}: {python[0]} but pyproject.toml requires {need}"
