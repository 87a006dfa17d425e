"""Serving latency: `iisan serve` under closed-loop load, and in-process recommend at 1M items.

1. A synthetic 100,000-item catalogue (every item in some user's history; random
   sequences, since only the query path matters here) and a run trained for one epoch on
   it, its index built by the first load. With ``--method iisan`` the run is what `iisan
   train` gives by default: IISAN over a random text encoder of minilm's shape (6 layers x
   384; features do not matter here, widths do), its scorer fitted: a full item vector is
   963 floats (the trained 64, the floor's 384 and 512 of words, 3 priors), and the index
   searches them mapped to 128 columns of one byte each (iisan.two_stage), whose best
   ``--candidates`` are scored again with the full vectors (iisan.scoring.compact; on random data validation cannot choose that number,
   so it is given: by default what calibration chose on Scientific); with ``--method id``,
   ID-SASRec, 64 floats, one stage. ``--method both`` (the default) measures the two side by
   side, alternating ``--rounds`` times.
2. `iisan serve` in a subprocess on 127.0.0.1; 16 concurrent clients (asyncio, one process,
   a minimal keep-alive HTTP/1.1 client) post `/recommend` (k = 10, test users' histories) back to back for 30 s.
   Reports throughput, p50 / p99 latency seen by the clients, the server's CPU per request,
   and errors.
3. In-process `Recommender.recommend` with the catalogue grown to 1,000,000 items by
   appending random embeddings of the trained rows' scale (so no 1M-item training is
   needed): flat and HNSW indexes, median and p99 per query, HNSW recall@10 vs exact, and
   the process's resident memory with each index.

    python bench/serve.py [--method both|iisan|id] [--work bench/out/serve] [--clients 16] [--seconds 30]
                          [--rounds 2] [--big-items 1000000] [--candidates 400]

Loopback only, bounded in count and time. Also reports what the index holds per item (the
first stage's bytes), the full vectors kept for the second stage, and the run folder's size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


# What calibration chose on Scientific for the default first stage (the median of 3 seeds;
# docs/results/scale.md): random synthetic data gives validation nothing to choose it by.
CANDIDATES = 400


def write_catalogue(folder: Path, items: int, seed: int = 0) -> None:
    """items.tsv / users.tsv: three shuffled passes over the catalogue cut into 13-item users."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    keys = np.char.add("p", np.arange(items).astype(str))
    (folder / "items.tsv").write_text("".join(f"{k}\tSynthetic product {k}\n" for k in keys))
    stream = np.concatenate([rng.permutation(items) for _ in range(3)])
    users = stream[: len(stream) // 13 * 13].reshape(-1, 13)
    (folder / "users.tsv").write_text("".join(f"u{u}\t{' '.join(keys[row])}\n" for u, row in enumerate(users)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def post_json(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str,
                    body: bytes) -> int:
    """One HTTP/1.1 keep-alive POST on an open connection; returns the status code.

    A minimal client on purpose: httpx costs about a millisecond of CPU per request, as
    much as the server, and on a 2-core machine the load generator's CPU is the server's.
    """
    writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (path.encode(), host.encode(), len(body), body))
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n")
                  if line.startswith(b"content-length:"))
    await reader.readexactly(length)
    return status


async def load(url: str, histories: list[list[str]], clients: int, seconds: float) -> dict:
    host, port = url.removeprefix("http://").split(":")
    bodies = [json.dumps({"history": h, "k": 10}).encode() for h in histories]
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(n: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        i = n
        try:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    ok = await post_json(reader, writer, f"{host}:{port}", "/recommend", bodies[i % len(bodies)]) == 200
                except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
                    ok = False
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                latencies.append(time.perf_counter() - start)
                errors += not ok
                i += clients
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.perf_counter() - start
    ms = [1000 * x for x in latencies]
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(ms), "errors": errors,
            "throughput_rps": round(len(ms) / elapsed, 1), "p50_ms": round(percentile(ms, 50), 2),
            "p99_ms": round(percentile(ms, 99), 2), "max_ms": round(max(ms), 2)}


def serve_under_load(run: Path, histories: list[list[str]], clients: int, seconds: float,
                     access_log: bool = True) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # stderr (the access log: a line per request) to a file: a pipe nobody reads would fill and stall the server
    log_file = run.parent / "serve.stderr"
    server = subprocess.Popen([sys.executable, "-m", "iisan", "serve", str(run), "--port", str(port),
                               "--access-log" if access_log else "--no-access-log"],
                              stdout=subprocess.DEVNULL, stderr=open(log_file, "w"))  # noqa: SIM115 - the server's
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise SystemExit(f"iisan serve exited: {log_file.read_text()}")
            time.sleep(0.2)
        asyncio.run(load(url, histories[:200], clients, 2))  # warm-up
        server_cpu, client_cpu = cpu_seconds(server.pid), time.process_time()
        result = asyncio.run(load(url, histories, clients, seconds))
        # Clients and server share this machine's cores: say who used them.
        result["server_cpu_s"] = round(cpu_seconds(server.pid) - server_cpu, 1)
        result["client_cpu_s"] = round(time.process_time() - client_cpu, 1)
        return result
    finally:
        server.terminate()
        server.wait(timeout=30)


def in_process_big(run: Path, histories: list[list[str]], big_items: int, queries: int) -> list[dict]:
    """The catalogue grown to ``big_items`` and kept as a served run keeps it: the full vectors
    in a safetensors file, memory-mapped; an id run's index holds its rows in memory, a
    two-stage index its first stage's codes (or graph)."""
    import torch
    from safetensors.numpy import save_file

    from iisan.cache.store import release_resident_pages
    from iisan.item_rows import ItemRows, map_safetensors
    from iisan.run.index_store import StoredIndex
    from iisan.scoring.blend import PRIORS
    from iisan.search import HnswSettings, ItemIndex, column_scale
    from iisan.serving.catalogue import Catalogue
    from iisan.serving.recommender import Recommender, sample_queries

    torch.set_num_threads(1)  # one query at a time, as one server worker handles it
    rec = Recommender.load(run)
    stage = rec.ranker.first_stage  # a blended run's narrow first stage, or None: one exact stage
    trained = rec.embeddings.numpy()
    rng = np.random.default_rng(1)
    # Grow the catalogue as add_items would, without running an item tower 900k times: random
    # rows of the trained rows' scale, in the same committed generation (no reload from disk).
    path = run.parent / f"big-{run.name}.safetensors"
    grown = (rng.standard_normal((big_items - rec.num_items, trained.shape[1])) * trained[1:].std(0)
             + trained[1:].mean(0)).astype(np.float32)
    if stage is not None:  # the priors' columns as add_items gives them: never seen in training, so cold
        new_item = torch.tensor([rec.num_items + 1])
        grown[:, -len(PRIORS):] = rec.ranker.blend.prior_features(new_item).numpy()
    save_file({"embeddings": np.concatenate([trained, grown])}, str(path))
    del grown  # 3.5 GB at 1M items: what a served run holds is measured below, not this
    base = map_safetensors(path, "embeddings", "run the bench again")
    rows = ItemRows(base)
    keys = rec.keys + [f"x{i}" for i in range(big_items - rec.num_items)]
    titles = [rec.item(key)["title"] if key else None for key in rec.keys] + [None] * (big_items - rec.num_items)
    generation = rec.store.current.stored.generation
    sample = sample_queries(rec, trained)  # as `iisan index build` shapes a graph: over what it searches
    scale = column_scale(sample @ stage.query_map if stage is not None else sample)

    def use_index(kind: str) -> None:
        settings = HnswSettings(m=32, ef_construction=100)
        index = (stage.index(rows, kind, settings, scale=scale) if stage is not None
                 else ItemIndex(rows.array(), kind, settings, scale=scale))
        release_resident_pages(base)  # the build read every row; a loaded run's index reads none
        stored = StoredIndex(index, rows, rec.added, generation)
        rec.store.current = Catalogue(stored, keys, titles, {key: i for i, key in enumerate(keys) if i}, rows)

    results = []
    exact_top: list[set[str]] = []
    exact_index = None  # the flat index, set on the first pass, for the hnsw ones
    for kind, ef_searches in (("flat", [None]), ("hnsw", [128, 512])):
        start = time.perf_counter()
        use_index(kind)
        build = time.perf_counter() - start
        for ef in ef_searches:
            if ef is not None:
                rec.index.faiss.hnsw.efSearch = ef
            for history in histories[:20]:
                rec.recommend(history, k=10)  # warm-up
            times, tops = [], []
            for history in histories[:queries]:
                start = time.perf_counter()
                answer = rec.recommend(history, k=10)
                times.append(1000 * (time.perf_counter() - start))
                tops.append({key for key, _ in answer})
            row = {"index": kind, "ef_search": ef, "items": rec.num_items, "build_s": round(build, 1),
                   "queries": len(times), "median_ms": round(statistics.median(times), 3),
                   "p99_ms": round(percentile(times, 99), 3), **memory()}
            row["distinct_answers"] = len({frozenset(t) for t in tops})  # few: the queries look alike
            if kind == "flat":
                exact_top = tops
            else:
                row["recall@10_vs_flat"] = round(float(np.mean([len(a & b) / 10 for a, b in zip(tops, exact_top)])), 4)
                # The same index on varied queries: random vectors of the embeddings' scale.
                probe = (rng.standard_normal((queries, trained.shape[1])) * trained[1:].std(0)).astype(np.float32)
                approx, _ = rec.index.search(probe, 10)
                exact, _ = exact_index.search(probe, 10)
                row["recall@10_random_queries"] = round(float(np.mean(
                    [len(set(a) & set(b)) / 10 for a, b in zip(approx.tolist(), exact.tolist())])), 4)
            results.append(row)
        if kind == "flat":
            exact_index = rec.index
            if stage is not None:  # the two stages against scoring every item with the full vectors
                everything = ItemIndex(rows.array(), "flat")
                probe = sample_queries(rec, trained)[:200]
                served = rec.index.search(probe, 10)[0]
                full = everything.search(probe, 10)[0]
                results[-1]["recall@10_vs_full_scoring"] = round(float(np.mean(
                    [len(set(a) & set(b)) / 10 for a, b in zip(served.tolist(), full.tolist())])), 4)
                del everything
                release_resident_pages(base)
    path.unlink()
    return results


def memory() -> dict:
    """This process's resident memory now (Linux /proc): all of it, its own (anonymous: the
    heap, what cannot be dropped) and file pages (a memory map's: the system may drop them).
    Freed memory is handed back first (glibc keeps it otherwise), so that what the build
    made and dropped is not counted as what serving holds."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    gib = {name: int(status[field].split()[0]) / 2**20 for name, field in
           (("rss_gib", "VmRSS"), ("rss_anon_gib", "RssAnon"), ("rss_file_gib", "RssFile"))}
    return {name: round(value, 2) for name, value in gib.items()}


def footprint(run: Path, items: int) -> dict:
    """Bytes per item: what the index searches, the full vectors it keeps, the run folder."""
    from iisan.serving.recommender import Recommender

    rec = Recommender.load(run)
    stage = rec.ranker.first_stage
    full = rec.embeddings.shape[1] * 4
    folder = sum(f.stat().st_size for f in run.rglob("*") if f.is_file())
    return {"searched_bytes_per_item": stage.width if stage is not None else full,  # a byte a column
            "full_vector_bytes_per_item": full, "candidates": stage.candidates if stage is not None else None,
            "run_folder_bytes_per_item": round(folder / items)}


def train_run(work: Path, items: int, method: str, candidates: int, serve_width: int = 64) -> None:
    """The synthetic catalogue (once for both methods) and a one-epoch run of ``method`` on it."""
    from iisan.cache.encode import encode
    from iisan.config import EncodeConfig, PrepareConfig, SideNetworkConfig, TrainConfig
    from iisan.data import prepare
    from iisan.encoders.tiny import build_tiny_encoder
    from iisan.training.loop import train

    source, dataset, cache, encoder = work / "src", work / "catalogue", work / "cache", work / "encoder-6x384"
    if not (dataset / "dataset.json").is_file():
        write_catalogue(source, items)
        prepare(source, dataset, PrepareConfig(format="iisan-tsv"))
    if method == "id":
        config = TrainConfig(method="id", epochs=1, train_batch_size=256, eval_user_chunk=256)
        train(dataset, work / "run-id", config, force=True)
        return
    if not encoder.is_dir():
        build_tiny_encoder(encoder, "text", hidden=384, layers=6, heads=6)
    encode(dataset, cache, EncodeConfig(text_encoder=str(encoder), image_encoder=None, max_text_tokens=32,
                                        encode_batch_size=512))
    config = TrainConfig.for_method("iisan", epochs=1, eval_user_chunk=256, candidates=candidates,
                                    serve_width=serve_width, side=SideNetworkConfig(modality="text"))
    train(dataset, work / "run-iisan", config, cache_dir=cache, force=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=("both", "iisan", "id"), default="both",
                        help="the runs served: iisan's defaults (blended: 963 floats an item, a first stage of "
                             "128 bytes), id (64 floats, one stage), or both side by side")
    parser.add_argument("--work", type=Path, default=Path("bench/out/serve"))
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rounds", type=int, default=2, help="HTTP loads per method, alternating")
    parser.add_argument("--candidates", type=int, default=CANDIDATES,
                        help="items the iisan run's first stage hands to exact scoring")
    parser.add_argument("--serve-width", type=int, default=128,
                        help="columns (a byte each) an item in the iisan run's first stage (0: the full vectors, "
                             "one stage)")
    parser.add_argument("--big-items", type=int, default=1_000_000, help="0 skips the in-process part")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--no-access-log", dest="access_log", action="store_false",
                        help="serve without the per-request log line (to measure what it costs)")
    args = parser.parse_args()

    from iisan.data.dataset import PreparedDataset
    from iisan.data.split import split_sequences

    methods = ("id", "iisan") if args.method == "both" else (args.method,)
    dataset = args.work / "catalogue"
    for method in methods:
        if not (args.work / f"run-{method}" / "model.safetensors").is_file():
            train_run(args.work, args.items, method, args.candidates, args.serve_width)
    keys = ["", *PreparedDataset.load(dataset).items["key"].to_list()]
    flat, offsets = PreparedDataset.load(dataset).sequence_arrays()
    inputs = split_sequences(flat, offsets, 10, len(keys) - 1).test.inputs
    histories = [[keys[i] for i in row if i] for row in inputs[np.random.default_rng(0).permutation(len(inputs))]]

    report: dict = {"catalogue_items": len(keys) - 1, "methods": {}}
    for method in methods:
        report["methods"][method] = {**footprint(args.work / f"run-{method}", len(keys) - 1), "http": []}
    for _ in range(args.rounds):  # alternating, so a busy spell of the machine hits both
        for method in methods:
            load_result = serve_under_load(args.work / f"run-{method}", histories, args.clients, args.seconds,
                                           args.access_log)
            load_result["server_cpu_ms_per_request"] = round(1000 * load_result["server_cpu_s"]
                                                             / max(load_result["requests"], 1), 2)
            report["methods"][method]["http"].append(load_result)
            print(method, json.dumps(load_result), flush=True)
    if len(methods) == 2 and args.rounds:
        rps = {m: statistics.median(r["throughput_rps"] for r in report["methods"][m]["http"]) for m in methods}
        report["iisan_vs_id_throughput"] = round(rps["iisan"] / rps["id"], 3)
    if args.big_items:
        for method in methods:
            report["methods"][method]["in_process"] = in_process_big(args.work / f"run-{method}", histories,
                                                                     args.big_items, args.queries)
            print(method, json.dumps(report["methods"][method]["in_process"]), flush=True)
    print(json.dumps(report, indent=2))
    (args.work / "serve.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
