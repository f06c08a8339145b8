//! The function table: the one list of functions, their triggers and their HTTP contract.
//!
//! Both front doors route from it, and a test checks that every `<name>/function.json` at the
//! repository root says the same thing, so the host's view and ours cannot drift apart.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthLevel {
    Anonymous,
    Function,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `route` is relative to the `api` prefix; `methods` are upper case.
    Http {
        route: &'static str,
        methods: &'static [&'static str],
        auth: AuthLevel,
    },
    Timer,
    Queue,
}

/// Which function: what `App` matches on (exhaustively, so a new function cannot be routed
/// nowhere), where the host's side knows it by [`Function::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FunctionId {
    Authorize,
    Callback,
    Webhook,
    Status,
    Sync,
    Process,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Function {
    pub id: FunctionId,
    /// The folder name, which is the path the host posts invocations to.
    pub name: &'static str,
    /// The trigger binding's `name`, the key of its value in the envelope's `Data`.
    pub binding: &'static str,
    pub trigger: Trigger,
}

pub const AUTHORIZE: Function = Function {
    id: FunctionId::Authorize,
    name: "authorize",
    binding: "req",
    trigger: Trigger::Http { route: "authorize", methods: &["GET"], auth: AuthLevel::Function },
};
pub const CALLBACK: Function = Function {
    id: FunctionId::Callback,
    name: "callback",
    binding: "req",
    trigger: Trigger::Http { route: "callback", methods: &["GET", "POST"], auth: AuthLevel::Anonymous },
};
pub const WEBHOOK: Function = Function {
    id: FunctionId::Webhook,
    name: "webhook",
    binding: "req",
    trigger: Trigger::Http { route: "webhook", methods: &["POST", "PUT", "PATCH"], auth: AuthLevel::Anonymous },
};
pub const STATUS: Function = Function {
    id: FunctionId::Status,
    name: "status",
    binding: "req",
    trigger: Trigger::Http { route: "status", methods: &["GET"], auth: AuthLevel::Function },
};
pub const SYNC: Function = Function { id: FunctionId::Sync, name: "sync", binding: "timer", trigger: Trigger::Timer };
pub const PROCESS: Function =
    Function { id: FunctionId::Process, name: "process", binding: "msg", trigger: Trigger::Queue };

/// Every function, in the order the host lists them.
pub const FUNCTIONS: &[Function] = &[AUTHORIZE, CALLBACK, WEBHOOK, STATUS, SYNC, PROCESS];

/// The HTTP output binding's name: the key of the response in the reply's `Outputs`.
pub const HTTP_OUTPUT: &str = "res";

/// Looks a function up by folder name. Exact case first, as the host sends it; any case
/// after, since a case-insensitive file system (or a hand-written request) may differ.
pub fn by_name(name: &str) -> Option<&'static Function> {
    FUNCTIONS.iter().find(|f| f.name == name).or_else(|| FUNCTIONS.iter().find(|f| f.name.eq_ignore_ascii_case(name)))
}

/// Looks an HTTP function up by its route (without the `api/` prefix), case-insensitively as
/// ASP.NET routing does.
pub fn by_route(route: &str) -> Option<&'static Function> {
    let route = route.trim_matches('/');
    FUNCTIONS.iter().find(|f| matches!(f.trigger, Trigger::Http { route: r, .. } if r.eq_ignore_ascii_case(route)))
}

/// The function table's entry for `id`.
pub fn get(id: FunctionId) -> &'static Function {
    match id {
        FunctionId::Authorize => &AUTHORIZE,
        FunctionId::Callback => &CALLBACK,
        FunctionId::Webhook => &WEBHOOK,
        FunctionId::Status => &STATUS,
        FunctionId::Sync => &SYNC,
        FunctionId::Process => &PROCESS,
    }
}

pub fn names() -> String {
    FUNCTIONS.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_has_one_row_and_get_finds_it() {
        for function in FUNCTIONS {
            assert_eq!(FUNCTIONS.iter().filter(|f| f.id == function.id).count(), 1, "{:?}", function.id);
            assert_eq!(get(function.id), function);
            assert_eq!(by_name(function.name), Some(function));
        }
        assert_eq!(FUNCTIONS.len(), 6);
    }
}
