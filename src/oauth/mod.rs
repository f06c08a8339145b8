//! OAuth 2.0 and OpenID Connect: the authorization server's endpoints ([`provider`]), the
//! token endpoint ([`token`]), id_token validation, and the sign-in flow's records.

pub mod provider;
pub mod token;
