"""The exact bytes each RSP signature covers, in one place (SGP.22 §5.5-5.7, SGP.32 §2.11).

Every function takes the TLVs *as received or as sent* (tag, length and value octets) and
returns the concatenation that is signed; nothing here decodes or re-encodes. The software
eUICC uses these to verify what the SM-DP+ and the eIM signed and to build what it signs
itself; SM-DP+ and eIM stand-ins built on `hil.rspcrypto` use the same functions, so the two
sides agree by construction while any independent ECDSA verifier can check the result.

- serverSignature1 (SM-DP+, CERT.DPauth): serverSigned1 (SGP.22 §5.7.13 / §5.6.1).
- euiccSignature1: euiccSigned1.
- smdpSignature2 (CERT.DPpb): smdpSigned2 || euiccSignature1 TLV ('5F37'), §5.6.2.
- euiccSignature2: euiccSigned2 || smdpSignature2 TLV ('5F37'), §5.7.5.
- smdpSign of InitialiseSecureChannel (CERT.DPpb): remoteOpId || transactionId ||
  controlRefTemplate || smdpOtpk TLVs as in the request || euiccOtpk TLV ('5F49' + the
  eUICC's otPK.EUICC.ECKA), §2.5.4 / §5.5.
- euiccSignPIR: profileInstallationResultData ('BF27'), §5.7.6 / §4.3.
- euiccNotificationSignature: tbsOtherNotification (NotificationMetadata, 'BF2F').
- euiccCancelSessionSignature: euiccCancelSessionSigned.
- eimSignature (SGP.32 §2.11.1.1): euiccPackageSigned || associationToken TLV ('84') when
  the eIM configuration holds an association token; just euiccPackageSigned otherwise.
- euiccSignEPR / euiccSignEPE (SGP.32 v1.2 §2.11.2.1): euiccPackageResultDataSigned (or
  euiccPackageErrorDataSigned) || associationToken TLV ('84') when one is configured.
  (SGP.32 v1.0 appended the request's eimSignature instead; v1.2 is what is implemented.)
"""

from __future__ import annotations

from gateway.spec import tlv

TAG_SIGNATURE = 0x5F37
TAG_OTPK = 0x5F49
TAG_ASSOCIATION_TOKEN = 0x84


def tlv_bytes(tag: int, value: bytes) -> bytes:
    return tlv.header(tag, len(value)) + value


def signature_tlv(signature: bytes) -> bytes:
    return tlv_bytes(TAG_SIGNATURE, signature)


def association_token_tlv(token: int) -> bytes:
    """'84' with the DER INTEGER content octets of the association token."""
    return tlv_bytes(TAG_ASSOCIATION_TOKEN, token.to_bytes(token.bit_length() // 8 + 1, "big", signed=True))


def server_signature1_input(server_signed1: bytes) -> bytes:
    return server_signed1


def euicc_signature1_input(euicc_signed1: bytes) -> bytes:
    return euicc_signed1


def smdp_signature2_input(smdp_signed2: bytes, euicc_signature1: bytes) -> bytes:
    """`euicc_signature1` is the bare r||s; its '5F37' TLV is what is appended."""
    return smdp_signed2 + signature_tlv(euicc_signature1)


def euicc_signature2_input(euicc_signed2: bytes, smdp_signature2: bytes) -> bytes:
    return euicc_signed2 + signature_tlv(smdp_signature2)


def smdp_sign_input(isc_fields: bytes, euicc_otpk: bytes) -> bytes:
    """`isc_fields`: remoteOpId..smdpOtpk TLVs of InitialiseSecureChannelRequest as sent."""
    return isc_fields + tlv_bytes(TAG_OTPK, euicc_otpk)


def profile_installation_result_input(pir_data: bytes) -> bytes:
    return pir_data


def notification_signature_input(tbs_other_notification: bytes) -> bytes:
    return tbs_other_notification


def cancel_session_signature_input(euicc_cancel_session_signed: bytes) -> bytes:
    return euicc_cancel_session_signed


def eim_signature_input(euicc_package_signed: bytes, association_token: int | None) -> bytes:
    if association_token is None:
        return euicc_package_signed
    return euicc_package_signed + association_token_tlv(association_token)


def euicc_package_result_signature_input(data_signed: bytes, association_token: int | None) -> bytes:
    """Input of euiccSignEPR (over euiccPackageResultDataSigned) and euiccSignEPE (error)."""
    if association_token is None:
        return data_signed
    return data_signed + association_token_tlv(association_token)
