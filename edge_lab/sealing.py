"""``edge bench --sealing``: what sealing galleries costs: bundle size and the time to make and to apply one,
in the clear and sealed to 1 and to N devices (one content key, N wrapped copies).

Apply is what a device does with a bundle that arrives: verify the signature, open its key block and the
content (sealed), parse and check every template, and write the gallery sealed under its own key.
Templates are random unit vectors of the embedder's dimension (their values do not change the cost).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.device.keys import DeviceKey
from edge.gallery.admit import Policy, admit
from edge.gallery.bundle import Dtype, Identity, encode
from edge.gallery.sealed import RECIPIENT_LEN, seal
from edge.gallery.store import GalleryStore

SHA = "ab" * 32


def _median_s(action: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        action()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def sealing_bench(
    dim: int,
    identities: int = 1000,
    per: int = 3,
    recipients: tuple[int, ...] = (1, 500),
    dtype: Dtype = "int8",
    repeats: int = 5,
) -> dict[str, object]:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(identities * per, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    people = [Identity(f"p{i:05d}", f"Person {i}", vecs[i * per : (i + 1) * per], {}) for i in range(identities)]
    signer = Ed25519PrivateKey.generate()
    devices = [DeviceKey(X25519PrivateKey.generate(), Path("device.key")) for _ in range(max(recipients))]
    out: dict[str, object] = {
        "identities": identities,
        "templates_per_identity": per,
        "dim": dim,
        "dtype": dtype,
        "repeats": repeats,
    }
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="edge-sealing-") as tmp:
        cases: list[tuple[str, int]] = [("clear", 0), *((f"sealed_to_{n}", n) for n in recipients)]
        for name, n in cases:

            def make(n: int = n) -> bytes:
                if n == 0:
                    return encode(people, "bench", 1, SHA, signer, dtype=dtype)
                return seal(people, "bench", 1, SHA, signer, [d.public for d in devices[:n]], dtype=dtype)

            data = make()
            policy = Policy(
                (signer.public_key(),), SHA, "bench", 1 << 30, device_key=devices[0], allow_plaintext=n == 0
            )
            store = GalleryStore(Path(tmp) / name, policy)

            def apply(data: bytes = data, policy: Policy = policy, store: GalleryStore = store) -> None:
                store.store_full(data, admit(data, policy))

            rows[name] = {
                "bytes": len(data),
                "make_s": round(_median_s(make, repeats), 4),
                "apply_s": round(_median_s(apply, repeats), 4),
                "stored_bytes": store.current_path.stat().st_size,
            }
    out["cases"] = rows
    if len(recipients) > 1:
        lo, hi = min(recipients), max(recipients)
        extra = (rows[f"sealed_to_{hi}"]["bytes"] - rows[f"sealed_to_{lo}"]["bytes"]) / (hi - lo)
        out["bytes_per_extra_recipient"] = round(extra, 1)
        out["recipient_block_bytes"] = RECIPIENT_LEN
    return out
