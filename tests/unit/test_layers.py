"""The layers hold at run time: defining jobs and running workers load no web framework; the client no server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

WEB = ("starlette", "fastapi", "flask", "uvicorn", "a2wsgi")


def loaded_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter has loaded after running `code`."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{name.split('.')[0] for name in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "code",
    [
        "from outlast import Outlast, JobContext",
        # a job defined and run by a worker, as `outlast worker` does it
        "import asyncio\n"
        "from outlast import Outlast\n"
        "ot = Outlast(store='memory://')\n"
        "@ot.job()\n"
        "async def add(a: int, b: int) -> int:\n"
        "    return a + b\n"
        "async def main():\n"
        "    async with ot.lifespan():\n"
        "        job, _ = await ot.submit('add', {'a': 1, 'b': 2}, wait_s=5)\n"
        "        assert job.result == 3, job\n"
        "asyncio.run(main())",
    ],
)
def test_jobs_and_workers_load_no_web_framework(code: str):
    assert loaded_after(code).isdisjoint(WEB)


def test_the_client_loads_nothing_of_the_server():
    loaded = loaded_after("import outlast.client")
    assert loaded.isdisjoint({*WEB, "pydantic"})
    assert "outlast" in loaded
    probe = "import json, outlast.client, sys; print(json.dumps([m for m in sys.modules if m.startswith('outlast')]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    server = {"outlast.core", "outlast.web", "outlast.stores", "outlast.runner", "outlast.jobs"}
    assert server.isdisjoint(json.loads(out.stdout)), out.stdout


def test_mounting_into_a_fastapi_app_brings_no_server_and_no_terminal_ui():
    """What `pip install outlast` gives is enough to mount outlast: no server, no command line of ours.

    (httpx loads click and rich for its own command line when they are installed, so their presence
    here proves nothing; the `standard` extra is what brings them.)
    """
    loaded = loaded_after("import examples.fastapi_app")
    assert {"fastapi", "starlette", "outlast"} <= loaded
    assert loaded.isdisjoint({"uvicorn", "httptools", "uvloop"})
    probe = "import json, sys, examples.fastapi_app; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    ours = {name for name in json.loads(out.stdout) if name.startswith("outlast.")}
    assert ours.isdisjoint({"outlast.cli", "outlast.client.cli", "outlast.devtools"}), ours


def test_the_command_line_says_which_extra_it_needs():
    code = (
        "import sys\n"
        "sys.modules['click'] = None  # as if the standard extra were not installed\n"
        "from outlast.__main__ import main\n"
        "main()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "pip install 'outlast[standard]'" in done.stderr
    assert "Traceback" not in done.stderr
