//! A web app with whirligig inside: its own page, a form that enqueues a
//! welcome email, its result, and the push endpoint with the health checks,
//! all on one port. Pub/Sub pushes to `/tasks/pubsub/`, which the fallback takes.

use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::{get, post};
use axum::{Json, Router};
use my_service::tasks::{SEND_WELCOME_EMAIL, Welcome};
use whirligig_handler::store::Execution;
use whirligig_handler::{PushService, Tasks};
use whirligig_registry::Kwargs;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let push = PushService::from_env(my_service::registry(), whirligig_handler::binary!()).await?;
    let app = Router::new()
        .route("/", get(page))
        .route("/welcome", post(welcome))
        .route("/welcome/{task_id}", get(result))
        .with_state(push.tasks().clone())
        .fallback_service(push.clone());
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", push.config().port)).await?;
    axum::serve(listener, app).with_graceful_shutdown(push.drain_on_signal()).await?;
    push.finish().await;
    Ok(())
}

async fn page() -> Html<&'static str> {
    Html(r#"<form method="post" action="/welcome">Welcome <input name="to"> <button>send</button></form>"#)
}

/// Enqueues the email; answers its task id.
async fn welcome(State(tasks): State<Tasks>, Form(welcome): Form<Welcome>) -> Result<String, (StatusCode, String)> {
    match tasks.enqueue(&SEND_WELCOME_EMAIL, Kwargs(welcome)).await {
        Ok(queued) => Ok(queued.task_id().to_owned()),
        Err(error) => Err((StatusCode::SERVICE_UNAVAILABLE, error.to_string())),
    }
}

/// The email's execution, as JSON.
async fn result(State(tasks): State<Tasks>, Path(task_id): Path<String>) -> Result<Json<Execution>, StatusCode> {
    match tasks.result(&task_id).await {
        Ok(execution) => execution.map(Json).ok_or(StatusCode::NOT_FOUND),
        Err(_) => Err(StatusCode::SERVICE_UNAVAILABLE),
    }
}
