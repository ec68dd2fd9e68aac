"""The protocol codec: ASN.1 (SGP.22/SGP.32), APDU framing and the ES10b/ESipa/ES9+/ES11 messages.

Pure: no I/O, no asyncio. Everything here takes bytes and returns bytes or plain values.
"""
