"""A split's decoded items read from its shards, in the suite's own order."""

from __future__ import annotations

from pathlib import Path

from ...errors import ConfigError
from ..cache import MIB
from .storage import is_url

#: the chunks of a local folder LitData keeps memory-mapped at once by default
LITDATA_MAPPED_CHUNKS = 4


class StreamedItems:
    """One split's decoded items, read from its shards: what a dataset keeps in place of a
    :class:`~cnnsuite.data.cache.DecodedCache`. The ``StreamingDataset`` is opened in the
    process that reads first (each DataLoader worker its own).

    A local split's chunk files are read in place, memory-mapped: ``mapped_mb`` bounds the
    chunks mapped at once (their pages are the kernel's page cache, which it takes back under
    pressure, but they count in the process's resident memory). LitData keeps four mapped and
    maps another one, dropping the oldest, when a read needs it: in a random order over more
    chunks than that nearly every read maps one, which costs more than the read itself."""

    cached = True  # every item comes whole, as a cache's do

    def __init__(
        self, location: str, stage: str, ids: list[str], mapped_mb: float = 0, fetched: str | None = None
    ) -> None:
        self.url, self.ids, self._dataset = f"{location.rstrip('/')}/{stage}", ids, None
        self.mapped_mb = mapped_mb
        self.fetched = fetched  # LitData's cache folder for object storage

    def __len__(self) -> int:
        return len(self.ids)

    def kept_chunks(self) -> int:
        """How many chunks stay mapped: the split's, within ``mapped_mb`` (at least LitData's
        four). Object storage keeps LitData's own setting, which there also decides how many
        chunks it fetches ahead."""
        if is_url(self.url):
            return LITDATA_MAPPED_CHUNKS
        chunks = list(Path(self.url).glob("*.bin"))
        largest = max((c.stat().st_size for c in chunks), default=0)
        if not largest or self.mapped_mb * MIB >= largest * len(chunks):  # all fit (an inf limit too)
            return max(LITDATA_MAPPED_CHUNKS, len(chunks))
        return max(LITDATA_MAPPED_CHUNKS, int(self.mapped_mb * MIB // largest))

    def __getitem__(self, index: int):
        if self._dataset is None:
            from litdata import StreamingDataset

            kept = self.kept_chunks()
            # LitData maps max(4, max_pre_download) chunks of a local folder at once
            options = {"max_pre_download": kept} if kept > LITDATA_MAPPED_CHUNKS else {}
            if is_url(self.url) and self.fetched is not None:
                options["cache_dir"] = self.fetched
            self._dataset = StreamingDataset(self.url, batch_decode=0, **options)
        entry = self._dataset[index]
        # bytes (a memoryview back), or a string in folders written before ids were bytes
        found = entry["id"] if isinstance(entry["id"], str) else bytes(entry["id"]).decode()
        if found != self.ids[index]:
            raise ConfigError(f"{self.url}: item {index} is {found!r}, its record says {self.ids[index]}")
        return entry["item"]
