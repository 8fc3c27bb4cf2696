"""whistle-stop: a benchmark farm for fast GPT inference on CPUs.

Everything installs under this one name. The layers keep the repository's top-level
folders (`worker/`, `orchestrator/`, `backends/`, `db/`, ...: the layout is fixed and each
folder is one floor), and pyproject.toml's `package-dir` maps each of them beneath this
package, so site-packages gains `whistle_stop` and nothing else. The floors, lowest first
(an import only ever points down; tests/test_imports.py checks it):

    contract, artifacts   the typed vocabulary both sides speak; the build-once cache
    native, db            the native engine's sources; the tables and sessions
    backends              one module per inference path
    worker                pinning, the job runner, measurement (never the database)
    executors             local pool and Celery, one protocol
    orchestrator          plan, dispatch, store: the single writer
    reports               the read side, opening the store read-only
    bench                 `farm bench NAME`: benchmarks that print figures, and the real
                          parts (redis-server, workers) they and the tests start
    cli                   `farm`, thin commands over the floors below
"""

# The mapped floors, lowest first: the wheel's package list, the source hash
# (contract/provenance.py) and the import-graph test all read this one tuple.
PACKAGES = (
    "contract",
    "native",
    "db",
    "backends",
    "worker",
    "executors",
    "orchestrator",
    "reports",
    "bench",
    "cli",
)
