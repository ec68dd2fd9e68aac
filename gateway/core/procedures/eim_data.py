"""IpaEuiccDataRequest (SGP.32 §2.11.2): the eIM asks for data, by a list of tags.

Theory of operation. The eUICC answers IpaEuiccDataRequest itself (ES10b, tag BF52) for
every tag it holds; the tags only the IPA knows (ipaCapabilities [8], deviceInfo [9]) are
taken out of the tag list before relaying and added to the eUICC's answer, with every
eUICC-provided element spliced as received (gateway.spec.signed).

    INITIAL --start--> COLLECTING   [IpaEuiccData]
    COLLECTING --device--> DONE     IpaEuiccDataResponse for the eIM
"""

from __future__ import annotations

from typing import Any

from gateway.core.procedures.base import (
    DEVICE,
    DONE,
    INITIAL,
    START,
    Call,
    DeviceAnswer,
    DeviceWork,
    Env,
    Finish,
    Note,
    Output,
    Procedure,
    row,
)
from gateway.errors import DecodeError
from gateway.spec import codec, signed, tlv
from gateway.spec.apdu import sw_error
from gateway.spec.es10b import decode_response, encode_request

COLLECTING = "COLLECTING"
IPA_ONLY_TAGS = (0xA8, 0xA9)   # ipaCapabilities, deviceInfo
_TAG_TRANSACTION_ID = 0x87   # IpaEuiccData.eimTransactionId [7]


def split_tag_list(tag_list: bytes) -> list[int]:
    tags, pos = [], 0
    while pos < len(tag_list):
        tag = tag_list[pos]
        pos += 1
        if tag & 0x1F == 0x1F:
            while pos < len(tag_list):
                tag = tag << 8 | tag_list[pos]
                pos += 1
                if not tag & 0x80:
                    break
        tags.append(tag)
    return tags


class EimData(Procedure):
    KIND = "eim_data"
    REPEATABLE = frozenset({COLLECTING})
    TABLE = {
        (INITIAL, START): row("_start", COLLECTING),
        (COLLECTING, DEVICE): row("_collected", DONE),
    }

    def _start(self, env: Env, _: object) -> tuple[str, list[Output]]:
        raw: bytes = self.ctx["request"]
        value = codec.decode("IpaEuiccDataRequest", raw)
        self.ctx["tid"] = value.get("eimTransactionId")
        tags = split_tag_list(bytes(value["tagList"]))
        self.ctx["ipa_tags"] = [t for t in tags if t in IPA_ONLY_TAGS]
        euicc_tags = [t for t in tags if t not in IPA_ONLY_TAGS]
        if not euicc_tags:
            return COLLECTING, [DeviceWork(())]
        if self.ctx["ipa_tags"]:
            value["tagList"] = b"".join(tlv.encode_tag(t) for t in euicc_tags)
            request = encode_request("IpaEuiccData", value)
        else:
            request = raw
        return COLLECTING, [DeviceWork((Call("IpaEuiccData", request),))]

    def _collected(self, env: Env, answer: object) -> tuple[str, list[Output]]:
        assert isinstance(answer, DeviceAnswer)
        parts: list[bytes] = []
        if answer.replies:
            reply = answer.replies[0]
            if reply.sw != 0x9000:
                raise sw_error(reply.sw)
            node = tlv.read_single(reply.data)
            if node.tag != signed.TAG_IPA_EUICC_DATA:
                raise DecodeError(f"tag {node.tag:X}", type_name="IpaEuiccDataResponse")
            (alt,) = tlv.children(reply.data, node)
            if alt.tag != 0xA0:
                return DONE, self._done(reply.data)
            parts = [c.raw_of(reply.data) for c in tlv.children(reply.data, alt)]
            if not self.ctx["ipa_tags"] and not self._missing_tid(parts):
                return DONE, self._done(reply.data)
        rest: dict[str, Any] = {}
        if self._missing_tid(parts):
            rest["eimTransactionId"] = self.ctx["tid"]   # echoed whatever the tag list (SGP.32 v1.2)
        if 0xA9 in self.ctx["ipa_tags"]:
            rest["deviceInfo"] = {"tac": env.config.device_tac, "deviceCapabilities": {}}
        if 0xA8 in self.ctx["ipa_tags"]:
            # direct + indirect RSP server communication; retrieve and inject over HTTPS
            rest["ipaCapabilities"] = {"ipaFeatures": (b"\xc0", 2), "ipaSupportedProtocols": (b"\xa0", 3)}
        if rest:
            encoded = codec.encode("IpaEuiccData", rest)
            parts.extend(c.raw_of(encoded) for c in tlv.children(encoded, tlv.read_single(encoded)))
        parts.sort(key=lambda p: _order(tlv.outer_tag(p)))
        return DONE, self._done(signed.wrap(0xBF52, signed.wrap(0xA0, *parts)))

    def _missing_tid(self, parts: list[bytes]) -> bool:
        return self.ctx["tid"] is not None and all(tlv.outer_tag(p) != _TAG_TRANSACTION_ID for p in parts)

    def _done(self, response: bytes) -> list[Output]:
        decode_response("IpaEuiccData", response)
        return [Note("ipaEuiccData", "ok"), Finish("ok", "", {"data": response})]

    def on_error(self, env: Env, previous: str, why: str) -> list[Output]:
        err: dict[str, Any] = {"ipaEuiccDataErrorCode": 127}
        if self.ctx.get("tid") is not None:
            err["eimTransactionId"] = self.ctx["tid"]
        data = codec.encode("IpaEuiccDataResponse", ("ipaEuiccDataResponseError", err))
        return [Note("ipaEuiccData", "failed", why), Finish("failed", why, {"data": data})]


_ORDER = (0xA0, 0x81, 0xA2, 0xBF20, 0xBF22, 0x83, 0x84, 0xA5, 0xA6, 0x87, 0xA8, 0xA9)


def _order(tag: int) -> int:
    return _ORDER.index(tag) if tag in _ORDER else len(_ORDER)
