"""Data larger than memory: a task's decoded items written once as LitData shards, then streamed.

``cnnsuite prepare`` builds a task's datamodule as ``fit`` would, decides its split as ``setup``
does, and writes, per split, the items its datasets decode from raw files before any random
augmentation (what :class:`~cnnsuite.data.cache.DecodedCache` would keep in memory) with
LitData's writer: ``OUT/train``, ``OUT/val``, ``OUT/test``. Beside them :data:`RECORD` says
what they are: the task, the datamodule's class and hyper-parameters, the split, the ids of the
items in shard order, class names, channels, the preprocessing state learnt from the training
split, what the task learnt of each sample that its datasets need before reading one (its
``sample_facts``: a video's duration and frame rate), the sha256 of every shard file and one
content hash over all of it.

An item is what the task's dataset decodes of one raw file, before any random draw of an
epoch (a crop, a clip, a flip): a tensor, or a dict or list of tensors and numbers (an image
with its boxes, a video's frames with their timestamps), which LitData stores field by field.

``--data.data_dir OUT`` (a local folder, or an ``s3://`` URL of one: LitData reads both) makes a
datamodule take its split, classes and preprocessing from the record and read each item from a
``litdata.StreamingDataset`` of the split's shards in place of decoding its raw file.

Why random access into the ``StreamingDataset`` rather than LitData's own shuffling and
``StreamingDataLoader``: the training order stays the suite's (:mod:`cnnsuite.data.resumable`:
drawn from the run's seed and epoch, sharded per DDP rank, its position in every checkpoint), so
a run resumes exactly in the middle of an epoch, the same seed draws the same batches from shards
as from raw files, and evaluation is item for item the raw path's. The price is reads in a random
order, which LitData's defaults are not made for:

- each read decodes its item alone (``batch_decode=0``): LitData's default decodes a window of up
  to 256 neighbours for the next reads to take, which a random order throws away at almost every
  read;
- a local split's chunks stay memory-mapped, as many as ``data.cache_limit_mb`` holds
  (:class:`StreamedItems`): LitData keeps four, and a random order over more maps a chunk again
  at almost every read;
- on object storage LitData reads each item by index with ranged GETs of its chunk (its
  ``on_demand_bytes``, on for reads by index: two requests an item, nothing kept), since a chunk
  it downloaded whole would be deleted as soon as a read moved to another chunk, which a random
  order does at almost every read. So a folder on object storage is copied once under
  ``<data_root>/cache/prepared``, each shard hashed there (:func:`check_shards`: every start
  downloads them all anyway until their hashes are known), and streamed from there as a local one; a later
  start copies only the shards whose object changed. Where the copy would not fit on the local
  disk the items are read from the bucket as LitData does, its copies of the splits'
  ``index.json`` kept under ``<data_root>/cache/litdata`` beside the suite's other caches (not
  LitData's ``~/.lightning/chunks``).

Its modules: :mod:`.storage` (where a folder's files are read from), :mod:`.record` (the record,
checked before it is believed), :mod:`.verify` (the shards against their record, and the local
copy of a folder on object storage), :mod:`.stream` (a split's items read from its shards) and
:mod:`.write` (``cnnsuite prepare``).
"""

from .record import RECORD, is_prepared, read_record, tensors_from_json, tensors_to_json
from .storage import PreparedFiles, is_url
from .stream import LITDATA_MAPPED_CHUNKS, StreamedItems
from .verify import check_shards
from .write import prepare, prepare_main, write_shards

__all__ = [
    "LITDATA_MAPPED_CHUNKS",
    "RECORD",
    "PreparedFiles",
    "StreamedItems",
    "check_shards",
    "is_prepared",
    "is_url",
    "prepare",
    "prepare_main",
    "read_record",
    "tensors_from_json",
    "tensors_to_json",
    "write_shards",
]
