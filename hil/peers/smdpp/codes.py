"""ES9+ status codes the SM-DP+ answers with (SGP.22 v2.5 §5.6 per function, §8.5 reason codes).

`Refusal` is raised by the service with the subjectCode/reasonCode pair of the function's
error table; the server turns it into `header.functionExecutionStatus` {status Failed,
statusCodeData}. Malformed request bodies are not in those tables: they get HTTP 400 with
a Failed header whose codes say "format error" (`MALFORMED`).
"""

from __future__ import annotations

from typing import Final


class Refusal(Exception):
    """A function refused with SGP.22 codes; `message` goes into statusCodeData.message."""

    def __init__(self, codes: tuple[str, str], message: str) -> None:
        self.subject_code, self.reason_code = codes
        self.message = message
        super().__init__(f"{self.subject_code}/{self.reason_code}: {message}")


# InitiateAuthentication (§5.6.1)
INVALID_SMDP_ADDRESS: Final = ("8.8.1", "3.8")
SECURITY_CONFIGURATION_NOT_SUPPORTED: Final = ("8.8.2", "3.1")
SVN_NOT_SUPPORTED: Final = ("8.8.3", "3.1")
CI_PK_UNAVAILABLE: Final = ("8.8.4", "3.7")
# AuthenticateClient (§5.6.3)
EUM_CERTIFICATE_INVALID: Final = ("8.1.2", "6.1")
EUM_CERTIFICATE_EXPIRED: Final = ("8.1.2", "6.3")
EUICC_CERTIFICATE_INVALID: Final = ("8.1.3", "6.1")
EUICC_CERTIFICATE_EXPIRED: Final = ("8.1.3", "6.3")
EUICC_SIGNATURE_INVALID: Final = ("8.1", "6.1")
MATCHING_ID_REFUSED: Final = ("8.2.6", "3.8")
EID_MISMATCH: Final = ("8.1.1", "3.8")
PROFILE_NOT_RELEASED: Final = ("8.2", "1.2")
NO_ELIGIBLE_PROFILE: Final = ("8.2.5", "4.3")
CI_PK_UNKNOWN: Final = ("8.11.1", "3.9")
# shared by AuthenticateClient, GetBoundProfilePackage, CancelSession
TRANSACTION_ID_UNKNOWN: Final = ("8.10.1", "3.9")
DOWNLOAD_ORDER_EXPIRED: Final = ("8.8.5", "4.10")
# GetBoundProfilePackage (§5.6.2)
BPP_REBINDING_REFUSED: Final = ("8.2.7", "3.8")   # another otPK for a BPP already bound
# CancelSession (§5.6.5)
INVALID_SMDP_OID: Final = ("8.8", "3.10")
# eUICC data that does not decode, and bodies that are not what the function expects
MALFORMED: Final = ("8.1", "2.1")
EXECUTION_ERROR: Final = ("8.1", "4.1")
