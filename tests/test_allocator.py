"""The process keeps freed tensor memory (cnnsuite.allocator), so steps stop faulting pages in."""

import subprocess
import sys

import pytest

from cnnsuite.allocator import keep_freed_memory, user_tuned

#: a step that allocates four 8 MiB blocks, writes them and frees them together, as a training
#: step frees its activations (straight from malloc: no small allocation of torch's or Python's
#: lands between them); prints the page faults of ten such steps after two to settle the heap
STEPS = """
import ctypes, resource, sys
from cnnsuite.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory({})
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def step():
    blocks = [libc.malloc(8 << 20) for _ in range(4)]
    for block in blocks:
        ctypes.memset(block, 1, 8 << 20)
    for block in blocks:
        libc.free(block)
for _ in range(2):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES_TOUCHED = 10 * 4 * (8 << 20) // 4096


def faults(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
    return int(run.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_activations_are_reused_without_faulting_their_pages_in_again():
    assert faults("default") > PAGES_TOUCHED // 2  # glibc's own thresholds hand the pages back
    assert faults("keep") < PAGES_TOUCHED // 20


def test_a_user_who_tunes_malloc_keeps_their_choice():
    for environ in ({"MALLOC_ARENA_MAX": "2"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
                    {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}):  # fmt: skip
        assert keep_freed_memory(environ) is False
    # a preloaded library that is no allocator is no choice of malloc
    assert not user_tuned({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libgomp.so.1"})
    assert user_tuned({"LD_PRELOAD": "/opt/lib/libgomp.so.1:/usr/lib/libtcmalloc_minimal.so.4"})
    assert user_tuned({"LD_PRELOAD": "/usr/lib/libtcmalloc_minimal.so.4:/opt/lib/libgomp.so.1"})  # listed first


def test_every_command_keeps_freed_memory(monkeypatch):
    from cnnsuite import commands

    kept = []
    monkeypatch.setattr(commands, "keep_freed_memory", lambda: kept.append(True))
    monkeypatch.setattr(commands.gc, "freeze", lambda: None)  # the test process keeps its collector
    monkeypatch.setattr("cnnsuite.cli.main", lambda argv: None)
    commands.main(["fit", "--help"])
    assert kept == [True]
