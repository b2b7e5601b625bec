"""A fake Hugging Face Hub on 127.0.0.1 that serves dataset repos from memory.

The hub is unreachable from the test machines, yet the default data source is a hub id. Pointing
HF_ENDPOINT at this server lets `datasets.load_dataset` run unchanged (repo info, file listing,
downloads, the cache) with only the network replaced. It answers the few endpoints those
libraries call for a public dataset repo, 404s everything else, and records every request so a
test can see which ones were made.
"""
import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # every repo has one commit
LAST_MODIFIED = "2024-01-04T16:13:41.000Z"


class FakeHub:
    """`with FakeHub({"owner/name": {path: bytes}}) as hub:` serves dataset repos at hub.url."""

    def __init__(self, datasets: dict[str, dict[str, bytes]]):
        self.datasets = datasets
        self.requests: list[str] = []  # "METHOD /path?query", in arrival order
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # --- the hub's answers ------------------------------------------------------------------

    def repo_info(self, repo_id: str) -> dict:
        files = self.datasets[repo_id]
        card = files.get("README.md", b"").decode()
        card_data = yaml.safe_load(card.split("---")[1]) if card.startswith("---") else {}
        return {"_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id,
                "author": repo_id.split("/")[0], "sha": COMMIT, "lastModified": LAST_MODIFIED,
                "private": False, "gated": False, "disabled": False, "tags": [],
                "cardData": card_data, "siblings": [{"rfilename": p} for p in sorted(files)],
                "createdAt": LAST_MODIFIED, "usedStorage": sum(map(len, files.values()))}

    def entry(self, repo_id: str, path: str) -> dict | None:
        """The tree / paths-info record of a file or folder, None if the repo has no such path."""
        files = self.datasets[repo_id]
        if path in files:
            data = files[path]
            return {"type": "file", "path": path, "size": len(data), "oid": _oid(data)}
        if path == "" or any(name.startswith(path + "/") for name in files):
            return {"type": "directory", "path": path, "oid": _oid(path.encode())}
        return None

    def tree(self, repo_id: str, folder: str, recursive: bool) -> list[dict] | None:
        if folder and (self.entry(repo_id, folder) or {}).get("type") != "directory":
            return None
        prefix = folder + "/" if folder else ""
        paths = set()
        for name in self.datasets[repo_id]:
            if name.startswith(prefix):
                parts = name[len(prefix):].split("/")
                depth = len(parts) if recursive else 1
                paths.update(prefix + "/".join(parts[:i + 1]) for i in range(depth))
        return [self.entry(repo_id, path) for path in sorted(paths)]


def _oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _handler_for(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # the request list is the log
            pass

        def do_HEAD(self):
            self.route(send_body=False)

        def do_GET(self):
            self.route()

        def do_POST(self):
            self.route()

        def route(self, send_body: bool = True):
            hub.requests.append(f"{self.command} {self.path}")
            url = urlsplit(self.path)
            path, query = unquote(url.path), parse_qs(url.query)
            form = {}
            if self.command == "POST":
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
            for repo_id in hub.datasets:
                api, resolve = f"/api/datasets/{repo_id}", f"/datasets/{repo_id}/resolve/"
                if path in (api, f"{api}/revision/main", f"{api}/revision/{COMMIT}"):
                    return self.send_json(hub.repo_info(repo_id), send_body)
                for revision in ("main", COMMIT):
                    tree = f"{api}/tree/{revision}"
                    if path == tree or path.startswith(tree + "/"):
                        recursive = query.get("recursive", ["false"])[0].lower() == "true"
                        listing = hub.tree(repo_id, path[len(tree) + 1:], recursive)
                        return self.send_json(listing, send_body) if listing is not None \
                            else self.send_error_json(404, "EntryNotFound", send_body)
                    if path == f"{api}/paths-info/{revision}":
                        entries = [hub.entry(repo_id, p) for p in form.get("paths", [])]
                        return self.send_json([e for e in entries if e], send_body)
                    if path.startswith(resolve + revision + "/"):
                        name = path[len(resolve + revision + "/"):]
                        if name in hub.datasets[repo_id]:
                            return self.send_file(hub.datasets[repo_id][name], send_body)
                        return self.send_error_json(404, "EntryNotFound", send_body)
            self.send_error_json(404, "RepoNotFound", send_body)

        def send_json(self, payload, send_body: bool):
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Repo-Commit", COMMIT)
            self.finish_body(body, send_body)

        def send_error_json(self, status: int, code: str, send_body: bool):
            body = json.dumps({"error": f"{code}: {self.path}"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Error-Code", code)
            self.finish_body(body, send_body)

        def send_file(self, data: bytes, send_body: bool):
            start, end = 0, len(data) - 1
            ranged = self.headers.get("Range", "").startswith("bytes=")
            if ranged:
                first, _, last = self.headers["Range"][6:].partition("-")
                if first:
                    start, end = int(first), min(int(last) if last else end, end)
                else:  # a suffix: the last N bytes
                    start = max(0, len(data) - int(last))
            self.send_response(206 if ranged else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{_oid(data)}"')
            self.send_header("Accept-Ranges", "bytes")
            if ranged:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.finish_body(data[start:end + 1], send_body)

        def finish_body(self, body: bytes, send_body: bool):
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

    return Handler


# --- repos shaped like stanfordnlp/imdb and stanfordnlp/sst2 -----------------------------------

IMDB_SPLITS = ("train", "test", "unsupervised")
SST2_SPLITS = ("train", "validation", "test")


def parquet_repo(splits: dict, features, config: str, folder: str, title: str) -> dict[str, bytes]:
    """README.md whose YAML declares `config` (the default) with one parquet file per split
    under `folder`/, written by `datasets` with `features`, as the real repos are."""
    from datasets import Dataset

    files, split_info = {}, []
    for split, frame in splits.items():
        dataset = Dataset.from_pandas(frame, features=features, preserve_index=False)
        buffer = io.BytesIO()
        dataset.to_parquet(buffer)
        files[f"{folder}/{split}-00000-of-00001.parquet"] = buffer.getvalue()
        split_info.append({"name": split, "num_bytes": dataset.data.nbytes,
                           "num_examples": len(dataset)})
    card = {
        "pretty_name": title,
        "dataset_info": {
            "config_name": config,
            "features": [{"name": name, "dtype": _card_dtype(feature)}
                         for name, feature in features.items()],
            "splits": split_info,
            "download_size": sum(map(len, files.values())),
            "dataset_size": sum(info["num_bytes"] for info in split_info),
        },
        "configs": [{"config_name": config, "default": True,
                     "data_files": [{"split": split, "path": f"{folder}/{split}-*"}
                                    for split in splits]}],
    }
    files["README.md"] = ("---\n" + yaml.safe_dump(card, sort_keys=False) + "---\n\n"
                          f"# A small stand-in for the {title} dataset card\n").encode()
    return files


def _card_dtype(feature):
    from datasets import ClassLabel
    if isinstance(feature, ClassLabel):
        return {"class_label": {"names": {str(i): name for i, name in enumerate(feature.names)}}}
    return feature.dtype


def imdb_repo(splits: dict) -> dict[str, bytes]:
    """The stanfordnlp/imdb layout: config plain_text, one parquet file per split under
    plain_text/, label a ClassLabel(neg, pos) (-1 in unsupervised). `splits` maps split name to
    a text/label frame."""
    from datasets import ClassLabel, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    return parquet_repo(splits, features, "plain_text", "plain_text", "IMDB")


def sst2_repo(splits: dict) -> dict[str, bytes]:
    """The stanfordnlp/sst2 layout: config default, files under data/, columns idx (int32),
    sentence (lowercased, Penn-Treebank tokenized) and label a ClassLabel(negative, positive),
    -1 in the test split. `splits` maps split name to a sentence/label frame; idx is added."""
    from datasets import ClassLabel, Features, Value

    features = Features({"idx": Value("int32"), "sentence": Value("string"),
                         "label": ClassLabel(names=["negative", "positive"])})
    frames = {split: frame.reset_index(drop=True).rename_axis("idx").reset_index()
              [["idx", "sentence", "label"]] for split, frame in splits.items()}
    return parquet_repo(frames, features, "default", "data", "SST-2")
