//! The function folders at the repository root say what the code's function table says.

use serde_json::Value;
use truecontext_bridge::functions::{AuthLevel, Trigger, FUNCTIONS, HTTP_OUTPUT};

fn read(path: &str) -> Value {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    serde_json::from_str(&std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
}

#[test]
fn every_function_folder_matches_the_function_table() {
    for function in FUNCTIONS {
        let doc = read(&format!("{}/function.json", function.name));
        let bindings = doc["bindings"].as_array().unwrap();
        let trigger = bindings.iter().find(|b| b["direction"] == "in").unwrap();
        assert_eq!(trigger["name"], function.binding, "{}: trigger binding name", function.name);
        match function.trigger {
            Trigger::Http { route, methods, auth } => {
                assert_eq!(trigger["type"], "httpTrigger");
                assert_eq!(trigger["route"], route, "{}", function.name);
                let declared: Vec<String> =
                    trigger["methods"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_uppercase()).collect();
                assert_eq!(declared, methods, "{}", function.name);
                let level = match auth {
                    AuthLevel::Anonymous => "anonymous",
                    AuthLevel::Function => "function",
                };
                assert_eq!(trigger["authLevel"], level, "{}", function.name);
                let output = bindings.iter().find(|b| b["direction"] == "out").unwrap();
                assert_eq!(output["type"], "http");
                assert_eq!(output["name"], HTTP_OUTPUT);
            }
            Trigger::Timer => {
                assert_eq!(trigger["type"], "timerTrigger");
                assert_eq!(trigger["schedule"], "%SYNC_SCHEDULE%");
                assert_eq!(trigger["runOnStartup"], false, "runOnStartup fires on every scale-out");
            }
            Trigger::Queue => {
                assert_eq!(trigger["type"], "queueTrigger");
                assert_eq!(trigger["queueName"], "%INCOMING_QUEUE_NAME%");
                assert_eq!(trigger["connection"], "AzureWebJobsStorage");
            }
        }
    }
}

#[test]
fn host_json_starts_the_binary_as_a_custom_handler() {
    let host = read("host.json");
    assert_eq!(host["version"], "2.0");
    assert_eq!(host["customHandler"]["description"]["defaultExecutablePath"], "tcbridge");
    assert_eq!(host["customHandler"]["description"]["arguments"], serde_json::json!(["serve"]));
    assert_eq!(host["customHandler"]["enableForwardingHttpRequest"], false);
    assert_eq!(host["extensions"]["http"]["routePrefix"], "api");
    assert!(host["extensionBundle"]["version"].as_str().unwrap().starts_with("[4."));
}

#[test]
fn local_settings_is_a_template_without_secrets() {
    let settings = read("local.settings.json");
    let values = settings["Values"].as_object().unwrap();
    assert_eq!(values["FUNCTIONS_WORKER_RUNTIME"], "custom");
    assert_eq!(values["AzureWebJobsStorage"], "UseDevelopmentStorage=true");
    for name in truecontext_bridge::config::Settings::secret_settings() {
        if let Some(value) = values.get(*name) {
            let value = value.as_str().unwrap();
            assert!(value.is_empty() || value == "UseDevelopmentStorage=true", "{name} holds a value");
        }
    }
}
