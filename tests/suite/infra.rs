//! The Bicep in `infra/`, checked for what checkov does not check (there is no Bicep compiler
//! to be had here): `scripts/check-infra.py` — modules exist, parameters are used, every setting
//! the binary reads is deployed (or deliberately not, with a reason), no Flex-deprecated
//! setting, secrets only as Key Vault references, role GUIDs match their names, roles scoped to
//! resources, host.json and the Bicep agree on maxDequeueCount. Its self-test proves each check
//! can fail.

use std::process::Command;

fn check_infra(args: &[&str]) -> (bool, String) {
    let output = Command::new("python3")
        .arg("scripts/check-infra.py")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("python3");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn the_templates_hold_together() {
    let (ok, text) = check_infra(&[]);
    assert!(ok, "{text}");
}

#[test]
fn each_infra_check_catches_its_fault() {
    let (ok, text) = check_infra(&["--self-test"]);
    assert!(ok, "{text}");
}
