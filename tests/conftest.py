"""Test session set-up: several fake CPU devices (for sharding tests) and float64."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=4").strip()

import pathlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The third-party AET data folder; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"third-party data not found at {SHARED_DATA}")
    return SHARED_DATA


class CompileCounter:
    """Counts XLA backend compilations while active (``with CompileCounter() as c``)."""

    def __init__(self):
        self.events = []

    def _listener(self, event, duration, **kwargs):
        if "backend_compile" in event:
            self.events.append(event)

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc):
        jax.monitoring.clear_event_listeners()
        return False

    @property
    def count(self) -> int:
        return len(self.events)


@pytest.fixture
def compile_counter():
    return CompileCounter


@pytest.fixture(autouse=True, scope="module")
def _compiled_programs_freed_after_each_module():
    """Every compiled program keeps its machine code mapped; the process's memory maps
    grow by thousands per test file (7,400 after the first six files), and the full suite
    passed Linux's limit of 65,530 (``vm.max_map_count``), where XLA segfaulted while
    compiling in a late test. Dropping JAX's caches after each file frees them."""
    yield
    jax.clear_caches()


@pytest.fixture(autouse=True)
def _compile_cache_stays_in_its_test():
    """The app turns JAX's persistent compilation cache on for its whole process
    (:func:`atomjax.compile_cache.enable`), so a test that runs it would leave it on for
    every later test. Put it back after each test: later tests compile as in a fresh
    process, and do not write every program they compile to a temporary cache."""
    before = jax.config.jax_compilation_cache_dir
    yield
    if jax.config.jax_compilation_cache_dir != before:
        from jax._src import compilation_cache

        jax.config.update("jax_compilation_cache_dir", before)
        compilation_cache.reset_cache()
