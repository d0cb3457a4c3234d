//! Which endpoint a request names, from its method and path alone.

use http::Method;

/// The OpenAI endpoints the mock imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Api {
    Chat,
    Completions,
    Embeddings,
    Responses,
    Models,
    /// Anthropic's Messages API.
    Messages,
    /// Anthropic's `/messages/count_tokens`.
    CountTokens,
}

impl Api {
    /// Anthropic's API rather than OpenAI's.
    pub(super) fn is_anthropic(self) -> bool {
        matches!(self, Api::Messages | Api::CountTokens)
    }
}

/// What a request asks for: an OpenAI endpoint or a control endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    Api(Api),
    GetConfig,
    SetConfig,
    Stats,
    StatsReset,
    NotFound,
}

/// API endpoints match on the path suffix so any prefix (`/v1`, `/openai/v1`) works.
pub(super) fn route(method: &Method, path: &str) -> Route {
    let path = path.trim_end_matches('/');
    match *method {
        Method::GET => match path {
            "/mock/config" => Route::GetConfig,
            "/mock/stats" => Route::Stats,
            p if p.ends_with("/models") => Route::Api(Api::Models),
            _ => Route::NotFound,
        },
        Method::POST => match path {
            "/mock/config" => Route::SetConfig,
            "/mock/stats/reset" => Route::StatsReset,
            p if p.ends_with("/chat/completions") => Route::Api(Api::Chat),
            p if p.ends_with("/completions") => Route::Api(Api::Completions),
            p if p.ends_with("/embeddings") => Route::Api(Api::Embeddings),
            p if p.ends_with("/responses") => Route::Api(Api::Responses),
            p if p.ends_with("/messages") => Route::Api(Api::Messages),
            p if p.ends_with("/messages/count_tokens") => Route::Api(Api::CountTokens),
            _ => Route::NotFound,
        },
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_any_prefix() {
        assert_eq!(route(&Method::POST, "/v1/chat/completions"), Route::Api(Api::Chat));
        assert_eq!(
            route(&Method::POST, "/openai/v1/completions/"),
            Route::Api(Api::Completions)
        );
        assert_eq!(route(&Method::POST, "/completions"), Route::Api(Api::Completions));
        assert_eq!(route(&Method::POST, "/v1/embeddings"), Route::Api(Api::Embeddings));
        assert_eq!(route(&Method::POST, "/v1/responses"), Route::Api(Api::Responses));
        assert_eq!(route(&Method::GET, "/v1/models"), Route::Api(Api::Models));
        assert_eq!(route(&Method::POST, "/v1/messages"), Route::Api(Api::Messages));
        assert_eq!(
            route(&Method::POST, "/v1/messages/count_tokens"),
            Route::Api(Api::CountTokens)
        );
        assert_eq!(route(&Method::GET, "/v1/chat/completions"), Route::NotFound);
        assert_eq!(route(&Method::POST, "/v1/xcompletions"), Route::NotFound);
        assert_eq!(route(&Method::POST, "/mock/config"), Route::SetConfig);
        assert_eq!(route(&Method::GET, "/mock/config"), Route::GetConfig);
        assert_eq!(route(&Method::GET, "/mock/stats"), Route::Stats);
        assert_eq!(route(&Method::POST, "/mock/stats/reset"), Route::StatsReset);
    }
}
