"""Profile state changes and queries (SGP.22 §5.7.15-5.7.19 as profiled by SGP.32 §5.9).

`enable`, `disable` and `delete` are the one implementation of each state change, used by
the PSMOs of LoadEuiccPackage (eim.py), by ProfileRollback, by the fallback mechanism and by
the emergency Profile functions; each returns the SGP.32 result code and leaves the
notifications the Profile's configuration asks for. A change of the enabled Profile counts
a REFRESH (`SoftEuicc.refresh_requests`): a real card would now ask the device to reset its
session with the network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.spec import codec
from hil.euicc.card import SW_REFERENCED_DATA_NOT_FOUND, StatusWord
from hil.euicc.dispatch import es10
from hil.euicc.info import bits, has_bit
from hil.euicc.notifications import EVENT_BITS, profile_event
from hil.euicc.state import Profile

if TYPE_CHECKING:
    from hil.euicc.euicc import SoftEuicc

OK = 0
ICCID_OR_AID_NOT_FOUND = 1
NOT_IN_EXPECTED_STATE = 2
DISALLOWED_BY_POLICY = 3
CAT_BUSY = 5

CLASS_NUMBERS = {"test": 0, "provisioning": 1, "operational": 2}
PPR_BITS = {"pprUpdateControl": 0, "ppr1": 1, "ppr2": 2}


# --- the state changes -----------------------------------------------------------------------


def _switch_on(euicc: SoftEuicc, profile: Profile) -> None:
    profile.state = "enabled"
    profile_event(euicc, profile, "enable")
    euicc.refresh_requests += 1


def _switch_off(euicc: SoftEuicc, profile: Profile) -> None:
    profile.state = "disabled"
    profile_event(euicc, profile, "disable")


def enable(euicc: SoftEuicc, profile: Profile | None) -> int:
    if profile is None or profile.install_state != "installed":
        return ICCID_OR_AID_NOT_FOUND
    if profile.state != "disabled":
        return NOT_IN_EXPECTED_STATE
    current = euicc.state.enabled_profile()
    if current is not None and "ppr1" in current.profile_policy_rules:
        return DISALLOWED_BY_POLICY
    if current is not None:
        _switch_off(euicc, current)
    _switch_on(euicc, profile)
    return OK


def disable(euicc: SoftEuicc, profile: Profile | None) -> int:
    if profile is None or profile.install_state != "installed":
        return ICCID_OR_AID_NOT_FOUND
    if profile.state != "enabled":
        return NOT_IN_EXPECTED_STATE
    if "ppr1" in profile.profile_policy_rules:
        return DISALLOWED_BY_POLICY
    _switch_off(euicc, profile)
    euicc.refresh_requests += 1
    return OK


def delete(euicc: SoftEuicc, profile: Profile | None) -> int:
    if profile is None or profile.install_state != "installed":
        return ICCID_OR_AID_NOT_FOUND
    if profile.state != "disabled":
        return NOT_IN_EXPECTED_STATE
    if "ppr2" in profile.profile_policy_rules:
        return DISALLOWED_BY_POLICY
    profile_event(euicc, profile, "delete")
    euicc.state.profiles.remove(profile)
    if euicc.state.rollback_iccid == profile.iccid:
        euicc.state.rollback_iccid = None
        euicc.state.rollback_context = None
    return OK


def switch(euicc: SoftEuicc, target: Profile) -> None:
    """Make `target` the enabled Profile regardless of policy (fallback, emergency, rollback)."""
    current = euicc.state.enabled_profile()
    if current is target:
        return
    if current is not None:
        _switch_off(euicc, current)
    _switch_on(euicc, target)


def installed(euicc: SoftEuicc) -> list[Profile]:
    return [p for p in euicc.state.profiles if p.install_state == "installed"]


# --- ProfileInfoList (SGP.22 §5.7.15, SGP.32 ProfileInfo) ------------------------------------

# tag of each ProfileInfo field, for the tagList of the request
FIELD_TAGS = {
    0x5A: "iccid", 0x4F: "isdpAid", 0x9F70: "profileState", 0x90: "profileNickname",
    0x91: "serviceProviderName", 0x92: "profileName", 0x93: "iconType", 0x94: "icon",
    0x95: "profileClass", 0xB6: "notificationConfigurationInfo", 0xB7: "profileOwner",
    0xB8: "dpProprietaryData", 0x99: "profilePolicyRules", 0xBF22: "serviceSpecificDataStoredInEuicc",
    0x9F7B: "ecallIndication", 0x9F26: "fallbackAttribute", 0x9F67: "fallbackAllowed",
}


def parse_tag_list(tag_list: bytes) -> list[int] | None:
    """The tags of a tagList ('5C'), or None when it is not a sequence of whole tags."""
    tags: list[int] = []
    i = 0
    while i < len(tag_list):
        tag = tag_list[i]
        i += 1
        if tag & 0x1F == 0x1F:
            while True:
                if i >= len(tag_list) or tag > 0xFFFFFF:
                    return None
                tag = (tag << 8) | tag_list[i]
                i += 1
                if not tag_list[i - 1] & 0x80:
                    break
        tags.append(tag)
    return tags


def profile_info(euicc: SoftEuicc, p: Profile, fields: set[str] | None) -> dict[str, Any]:
    full: dict[str, Any] = {
        "iccid": p.iccid,
        "isdpAid": p.isdp_aid,
        "profileState": 1 if p.state == "enabled" else 0,
        "profileNickname": p.nickname,
        "serviceProviderName": p.service_provider_name,
        "profileName": p.profile_name,
        "iconType": {"jpg": 0, "png": 1}.get(p.icon_type or ""),
        "icon": p.icon,
        "profileClass": CLASS_NUMBERS[p.profile_class],
        "notificationConfigurationInfo": [
            {"profileManagementOperation": bits(*(EVENT_BITS[e] for e in events)), "notificationAddress": addr}
            for events, addr in p.notification_config] or None,
        "dpProprietaryData": codec.decode("DpProprietaryData", p.dp_proprietary_data)
        if p.dp_proprietary_data else None,
        "profilePolicyRules": bits(*(PPR_BITS[r] for r in p.profile_policy_rules))
        if p.profile_policy_rules else None,
        "ecallIndication": p.emergency or None,
        "fallbackAttribute": p.fallback,
        "fallbackAllowed": p.fallback_allowed,
    }
    return {k: v for k, v in full.items() if v is not None and (fields is None or k in fields)}


def list_profile_info(euicc: SoftEuicc, value: Any) -> tuple[str, Any]:
    """The ProfileInfoListResponse value for a ProfileInfoListRequest value."""
    fields: set[str] | None = None
    if "tagList" in value:
        tags = parse_tag_list(value["tagList"])
        if tags is None:
            return ("profileInfoListError", 1)
        fields = {FIELD_TAGS[t] for t in tags if t in FIELD_TAGS}
    chosen = installed(euicc)
    criteria = value.get("searchCriteria")
    if criteria is not None:
        kind, wanted = criteria
        if kind == "iccid":
            chosen = [p for p in chosen if p.iccid == wanted]
        elif kind == "isdpAid":
            chosen = [p for p in chosen if p.isdp_aid == wanted]
        elif kind == "profileClass":
            chosen = [p for p in chosen if CLASS_NUMBERS[p.profile_class] == wanted]
    if euicc.bpp is not None:
        return ("profileInfoListError", 11)
    return ("profileInfoListOk", [profile_info(euicc, p, fields) for p in chosen])


@es10(0xBF2D, "ProfileInfoList", "ProfileInfoListRequest")
def profile_info_list(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    return codec.encode("ProfileInfoListResponse", list_profile_info(euicc, value))


# --- GetRAT (SGP.22 §5.7.20) ------------------------------------------------------------------


def rules_authorisation_table() -> list[dict[str, Any]]:
    """One rule: PPR1 and PPR2 allowed for any operator, with end-user consent."""
    return [{"pprIds": bits(1, 2), "allowedOperators": [{"mccMnc": b"\xee\xee\xee"}],
             "pprFlags": bits(0)}]


@es10(0xBF43, "GetRAT", "GetRatRequest")
def get_rat(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    return codec.encode("GetRatResponse", {"rat": rules_authorisation_table()})


# --- EuiccMemoryReset (SGP.32 §5.9.x, SGP.22 §5.7.19) -------------------------------------------

RESET_BITS = {"deleteOperationalProfiles": 0, "deleteFieldLoadedTestProfiles": 1,
              "resetDefaultSmdpAddress": 2, "deletePreLoadedTestProfiles": 3,
              "deleteProvisioningProfiles": 4, "resetEimConfigData": 5, "resetImmediateEnableConfig": 6}


@es10(0xBF64, "EuiccMemoryReset", "EuiccMemoryResetRequest")
def euicc_memory_reset(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    options = value["resetOptions"]
    if euicc.state.emergency_active:
        return codec.encode("EuiccMemoryResetResponse", {"resetResult": 104})
    doomed_classes = set()
    if has_bit(options, RESET_BITS["deleteOperationalProfiles"]):
        doomed_classes.add("operational")
    if has_bit(options, RESET_BITS["deleteFieldLoadedTestProfiles"]) or \
            has_bit(options, RESET_BITS["deletePreLoadedTestProfiles"]):
        doomed_classes.add("test")
    if has_bit(options, RESET_BITS["deleteProvisioningProfiles"]):
        doomed_classes.add("provisioning")
    doomed = [p for p in euicc.state.profiles if p.profile_class in doomed_classes]
    changed = bool(doomed)
    for p in doomed:
        if p.state == "enabled":
            euicc.refresh_requests += 1
        euicc.state.profiles.remove(p)
    if doomed:
        euicc.state.rollback_iccid = None
        euicc.state.fallback_from_iccid = None
    if has_bit(options, RESET_BITS["resetDefaultSmdpAddress"]) and euicc.state.default_dp_address is not None:
        euicc.state.default_dp_address = None
        changed = True
    response: dict[str, Any] = {"resetResult": 0 if changed else 1}
    if has_bit(options, RESET_BITS["resetEimConfigData"]):
        response["resetEimResult"] = 0 if euicc.state.eims else 1
        euicc.state.eims = []
        changed = True
    if has_bit(options, RESET_BITS["resetImmediateEnableConfig"]):
        euicc.state.immediate_enable = False
        euicc.state.immediate_enable_address = None
        response["resetImmediateEnableConfigResult"] = 0
        changed = True
    if changed:
        response["resetResult"] = 0
        euicc.commit()
    return codec.encode("EuiccMemoryResetResponse", response)


# --- SGP.32 functions around the enabled Profile -------------------------------------------------


@es10(0xBF65, "SetDefaultDpAddress", "SetDefaultDpAddressRequest")
def set_default_dp_address(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    euicc.state.default_dp_address = value["defaultDpAddress"] or None
    euicc.commit()
    return codec.encode("SetDefaultDpAddressResponse", {"setDefaultDpAddressResult": 0})


@es10(0xBF59, "ConfigureImmediateProfileEnabling", "ConfigureImmediateProfileEnablingRequest")
def configure_immediate_profile_enabling(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    if euicc.state.eims:
        return codec.encode("ConfigureImmediateProfileEnablingResponse", {"configImmediateEnableResult": 2})
    if euicc.faults.memory_full:
        return codec.encode("ConfigureImmediateProfileEnablingResponse", {"configImmediateEnableResult": 1})
    configure_immediate_enable(euicc, value)
    euicc.commit()
    return codec.encode("ConfigureImmediateProfileEnablingResponse", {"configImmediateEnableResult": 0})


def configure_immediate_enable(euicc: SoftEuicc, value: Any) -> None:
    euicc.state.immediate_enable = "immediateEnableFlag" in value
    if "defaultSmdpAddress" in value:
        euicc.state.immediate_enable_address = value["defaultSmdpAddress"]


@es10(0xBF5A, "ImmediateEnable", "ImmediateEnableRequest")
def immediate_enable(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    if not euicc.state.immediate_enable:
        result = 1
    elif euicc.just_installed is None or euicc.state.profile(euicc.just_installed) is None:
        result = 4
    else:
        target = euicc.state.profile(euicc.just_installed)
        assert target is not None
        switch(euicc, target)
        euicc.just_installed = None
        euicc.commit()
        result = 0
    return codec.encode("ImmediateEnableResponse", {"immediateEnableResult": result})


@es10(0xBF58, "ProfileRollback", "ProfileRollbackRequest")
def profile_rollback(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    from hil.euicc.eim import rollback_package_result

    target = euicc.state.profile(euicc.state.rollback_iccid) if euicc.state.rollback_iccid else None
    if target is None:
        return codec.encode("ProfileRollbackResponse", {"cmdResult": 1})
    switch(euicc, target)
    context = euicc.state.rollback_context
    euicc.state.rollback_iccid = None
    euicc.state.rollback_context = None
    response: dict[str, Any] = {"cmdResult": 0}
    if context is not None:
        response["eUICCPackageResult"] = rollback_package_result(euicc, context)
    euicc.commit()
    return codec.encode("ProfileRollbackResponse", response)


@es10(0xBF5D, "ExecuteFallbackMechanism", "ExecuteFallbackMechanismRequest")
def execute_fallback_mechanism(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    fallback = next((p for p in installed(euicc) if p.fallback), None)
    current = euicc.state.enabled_profile()
    if euicc.state.emergency_active:
        result = 104
    elif fallback is None or euicc.state.fallback_from_iccid is not None:
        result = 6
    elif fallback is current:
        result = 2
    else:
        euicc.state.fallback_from_iccid = current.iccid if current is not None else b""
        switch(euicc, fallback)
        euicc.commit()
        result = 0
    return codec.encode("ExecuteFallbackMechanismResponse", {"executeFallbackMechanismResult": result})


@es10(0xBF5E, "ReturnFromFallback", "ReturnFromFallbackRequest")
def return_from_fallback(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    origin = euicc.state.fallback_from_iccid
    if origin is None:
        return codec.encode("ReturnFromFallbackResponse", {"returnFromFallbackResult": 6})
    previous = euicc.state.profile(origin) if origin else None
    if previous is not None:
        switch(euicc, previous)
    else:
        current = euicc.state.enabled_profile()
        if current is not None:
            _switch_off(euicc, current)
            euicc.refresh_requests += 1
    euicc.state.fallback_from_iccid = None
    euicc.commit()
    return codec.encode("ReturnFromFallbackResponse", {"returnFromFallbackResult": 0})


@es10(0xBF5B, "EnableEmergencyProfile", "EnableEmergencyProfileRequest")
def enable_emergency_profile(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    emergency = next((p for p in installed(euicc) if p.emergency), None)
    if emergency is None:
        result = 8
    elif emergency.state == "enabled":
        result = 2
    else:
        current = euicc.state.enabled_profile()
        euicc.state.emergency_from_iccid = current.iccid if current is not None else None
        euicc.state.emergency_active = True
        switch(euicc, emergency)
        euicc.commit()
        result = 0
    return codec.encode("EnableEmergencyProfileResponse", {"enableEmergencyProfileResult": result})


@es10(0xBF5C, "DisableEmergencyProfile", "DisableEmergencyProfileRequest")
def disable_emergency_profile(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    if not euicc.state.emergency_active:
        return codec.encode("DisableEmergencyProfileResponse", {"disableEmergencyProfileResult": 2})
    previous = euicc.state.profile(euicc.state.emergency_from_iccid) if euicc.state.emergency_from_iccid else None
    if previous is not None:
        switch(euicc, previous)
    else:
        current = euicc.state.enabled_profile()
        if current is not None:
            _switch_off(euicc, current)
    euicc.state.emergency_active = False
    euicc.state.emergency_from_iccid = None
    euicc.commit()
    return codec.encode("DisableEmergencyProfileResponse", {"disableEmergencyProfileResult": 0})


@es10(0xBF5F, "GetConnectivityParameters", "GetConnectivityParametersRequest")
def get_connectivity_parameters(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    current = euicc.state.enabled_profile()
    if current is None or current.connectivity_parameters is None:
        return codec.encode("GetConnectivityParametersResponse", ("connectivityParametersError", 1))
    return codec.encode("GetConnectivityParametersResponse",
                        ("connectivityParameters", {"httpParams": current.connectivity_parameters}))


# --- ES10a / ES10c reads the IPA needs (SGP.22 §5.7.3, §5.7.20) ------------------------------------


@es10(0xBF3C, "GetEuiccConfiguredAddresses", "EuiccConfiguredAddressesRequest")
def get_euicc_configured_addresses(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    response: dict[str, Any] = {"rootDsAddress": euicc.state.root_ds_address}
    if euicc.state.default_dp_address is not None:
        response["defaultDpAddress"] = euicc.state.default_dp_address
    return codec.encode("EuiccConfiguredAddressesResponse", response)


@es10(0xBF3E, "GetEID", "GetEuiccDataRequest")
def get_eid(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    if value["tagList"] != b"\x5a":
        raise StatusWord(SW_REFERENCED_DATA_NOT_FOUND, "GetEuiccData supports tag 5A (EID) only")
    return codec.encode("GetEuiccDataResponse", {"eidValue": euicc.eid})
