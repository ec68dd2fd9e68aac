"""Codec benchmarks (not part of the test run): `python bench/codec.py [--json]`.

- bpp_cut_ms: median time to cut a 100 KB BoundProfilePackage into its ES8+ segments and
  each segment into STORE DATA APDUs (gateway.spec.bpp.store_data_apdus, segment size 255).
  Target: < 5 ms.
- eim_package_codec_per_s: decode + encode round trips per second of a DER
  GetEimPackageResponse carrying an EuiccPackageRequest (gateway.spec.codec). null, with a
  reason, when the codec is not available or cannot encode the sample.
"""

from __future__ import annotations

import os
import sys

# `python bench/codec.py` puts bench/ first on sys.path, where a sibling such as bench/queue.py
# would shadow the standard library module of the same name for everything imported below.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from gateway.spec import bpp, tlv  # noqa: E402

BPP_TARGET_MS = 5.0


def _t(tag: int, value: bytes) -> bytes:
    return tlv.header(tag, len(value)) + value


def sample_bpp(total: int = 100 * 1024) -> bytes:
    """A structurally valid BPP of about `total` bytes: 1020-byte profile-element segments."""
    isc = _t(0xBF23, _t(0x02, b"\x01") + _t(0x80, bytes(16)) + _t(0xA6, bytes(12))
             + _t(0x5F49, bytes(65)) + _t(0x5F37, bytes(64)))
    head = isc + _t(0xA0, _t(0x87, bytes(48))) + _t(0xA1, _t(0x88, bytes(400)))
    head += _t(0xA2, _t(0x87, bytes(48)))
    element = _t(0x86, bytes(1020))
    count = max(1, (total - len(head)) // len(element))
    return _t(0xBF36, head + _t(0xA3, element * count))


def _median_ms(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def bench_bpp_cut(runs: int) -> dict[str, Any]:
    data = sample_bpp()
    seqs = bpp.store_data_apdus(data, 255)
    if b"".join(block[5:] for seq in seqs for block in seq) != data:
        raise SystemExit("BPP cut does not re-join to the input")
    median, p95 = _median_ms(lambda: bpp.store_data_apdus(data, 255), runs)
    return {
        "bpp_bytes": len(data),
        "bpp_segments": len(seqs),
        "bpp_apdus": sum(len(s) for s in seqs),
        "bpp_cut_ms": round(median, 4),
        "bpp_cut_p95_ms": round(p95, 4),
        "bpp_cut_runs": runs,
        "bpp_cut_target_ms": BPP_TARGET_MS,
    }


def sample_get_eim_package_response() -> tuple[str, Any]:
    euicc_package_request = {
        "euiccPackageSigned": {
            "eimId": "eim.example.org",
            "eidValue": bytes.fromhex("89049032123451234512345678901235"),
            "counterValue": 42,
            "eimTransactionId": bytes(range(16)),
            "euiccPackage": ("psmoList", [
                ("enable", {"iccid": bytes.fromhex("98001032547698103214")}),
                ("listProfileInfo", {}),
            ]),
        },
        "eimSignature": bytes(range(64)),
    }
    return ("euiccPackageRequest", euicc_package_request)


def bench_eim_package_codec(seconds: float) -> dict[str, Any]:
    try:
        from gateway.spec import codec
    except Exception as exc:  # noqa: BLE001 - missing or broken codec module
        return {"eim_package_codec_per_s": None, "eim_package_codec_reason": f"codec not available: {exc}"}
    try:
        der = codec.encode("GetEimPackageResponse", sample_get_eim_package_response())
        if codec.encode("GetEimPackageResponse", codec.decode("GetEimPackageResponse", der)) != der:
            return {"eim_package_codec_per_s": None,
                    "eim_package_codec_reason": "decode+encode did not reproduce the DER"}
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not fail
        return {"eim_package_codec_per_s": None,
                "eim_package_codec_reason": f"sample not encodable: {type(exc).__name__}: {exc}"}
    count = 0
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while True:
        for _ in range(50):
            codec.encode("GetEimPackageResponse", codec.decode("GetEimPackageResponse", der))
        count += 50
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - t0
    return {"eim_package_codec_per_s": round(count / elapsed, 1), "eim_package_der_bytes": len(der),
            "eim_package_codec_rounds": count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=500, help="BPP cut repetitions (median reported)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time spent on the codec rate")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"python": platform.python_version()}
    result.update(bench_bpp_cut(args.runs))
    result.update(bench_eim_package_codec(args.seconds))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"BPP cut: {result['bpp_bytes']} bytes -> {result['bpp_segments']} segments, "
              f"{result['bpp_apdus']} APDUs: median {result['bpp_cut_ms']} ms, "
              f"p95 {result['bpp_cut_p95_ms']} ms over {args.runs} runs "
              f"(target < {BPP_TARGET_MS} ms)")
        rate = result["eim_package_codec_per_s"]
        if rate is None:
            print(f"GetEimPackageResponse decode+encode: null ({result['eim_package_codec_reason']})")
        else:
            print(f"GetEimPackageResponse decode+encode: {rate}/s "
                  f"({result['eim_package_der_bytes']} bytes DER)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
