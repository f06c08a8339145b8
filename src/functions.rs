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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Function {
    /// The folder name, which is the path the host posts invocations to.
    pub name: &'static str,
    /// The trigger binding's `name`, the key of its value in the envelope's `Data`.
    pub binding: &'static str,
    pub trigger: Trigger,
}

pub const FUNCTIONS: &[Function] = &[
    Function {
        name: "authorize",
        binding: "req",
        trigger: Trigger::Http { route: "authorize", methods: &["GET"], auth: AuthLevel::Function },
    },
    Function {
        name: "callback",
        binding: "req",
        trigger: Trigger::Http { route: "callback", methods: &["GET", "POST"], auth: AuthLevel::Anonymous },
    },
    Function {
        name: "webhook",
        binding: "req",
        trigger: Trigger::Http { route: "webhook", methods: &["POST", "PUT", "PATCH"], auth: AuthLevel::Anonymous },
    },
    Function {
        name: "status",
        binding: "req",
        trigger: Trigger::Http { route: "status", methods: &["GET"], auth: AuthLevel::Function },
    },
    Function { name: "sync", binding: "timer", trigger: Trigger::Timer },
    Function { name: "process", binding: "msg", trigger: Trigger::Queue },
];

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

pub fn names() -> String {
    FUNCTIONS.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
}
