"""A software eUICC (SGP.22 + SGP.32 v1.2 ISD-R) with real cryptography, for tests and rigs.

Public interface (stable; other packages depend on it):

    from hil.euicc import SoftEuicc, Faults, PowerLoss
    card = SoftEuicc(pki, eid, state_path=None, faults=Faults())
        pki:        a `hil.pki.RspPki` or the directory of one (generated there if empty)
        eid:        16 bytes (or 32 hex digits); its eUICC certificate is issued from the
                    PKI's EUM key on first use (the default EUM covers EIDs 89049032...)
        state_path: JSON file holding the non-volatile state; None keeps it in memory
        faults:     `Faults(delay_s, sw_on_command, tear_after_bpp_segments, memory_full)`
    card.transmit(apdu: bytes) -> bytes       # response data + SW1 SW2
    card.power_cycle()                        # reset: volatile state gone, NVM kept

Inspection helpers for tests: `card.profiles` (list of `state.Profile`),
`card.notifications` (list of `state.Notification`: seq_number, event, address, iccid and
the exact signed `der`), `card.session_open`, `card.state` (the whole `state.EuiccState`),
`card.identity` (EID, key, eUICC/EUM/CI certificates), `card.refresh_requests` (REFRESHes a
real card would have asked for after a change of the enabled Profile),
`card.apdu.open_channels()`.

APDU shell: ``python -m hil.euicc --pki DIR --eid EID --state FILE`` reads one command
APDU per line in hex on stdin and writes each response in hex on stdout.

ES10 functions answered (request tag): GetEUICCInfo1 BF20, PrepareDownload BF21, GetEUICCInfo2
BF22, ListNotification BF28, RetrieveNotificationsList BF2B, ProfileInfoList BF2D,
GetEuiccChallenge BF2E, RemoveNotificationFromList BF30, LoadBoundProfilePackage BF36 (ES8+
segments), AuthenticateServer BF38, GetEuiccConfiguredAddresses BF3C, GetEID BF3E, CancelSession
BF41, IpaeActivation BF42 (notSupported), GetRAT BF43, LoadEuiccPackage BF51, IpaEuiccData BF52,
GetEimConfigurationData BF55, GetCerts BF56, AddInitialEim BF57, ProfileRollback BF58,
ConfigureImmediateProfileEnabling BF59, ImmediateEnable BF5A, Enable/DisableEmergencyProfile
BF5B/BF5C, ExecuteFallbackMechanism BF5D, ReturnFromFallback BF5E, GetConnectivityParameters
BF5F, EuiccMemoryReset BF64, SetDefaultDpAddress BF65. Not implemented: the SGP.32 compact
response forms, ES10c (EnableProfile/DisableProfile/DeleteProfile/SetNickname).

Modules: card (ISO 7816 layer), state (NVM), faults, euicc (dispatch and lifecycle), rsp
(download functions), bpp_load (LoadBoundProfilePackage), notifications, profiles, eim
(SGP.32 eIM functions), info (EUICCInfo1/2), signed_data (what each signature covers).
"""

from hil.euicc import eim, notifications, profiles, rsp  # noqa: F401  (register the ES10 functions)
from hil.euicc.euicc import RspSession, SoftEuicc
from hil.euicc.faults import Faults, PowerLoss

__all__ = ["Faults", "PowerLoss", "RspSession", "SoftEuicc"]
