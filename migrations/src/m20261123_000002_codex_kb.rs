//! The `codex_kb` schema (wire-compat.md §4), adopted as-is where the old service created it.
//!
//! On Postgres every statement is `IF NOT EXISTS`, with the old service's table, column and
//! constraint names, so an existing database keeps its rows and gains nothing it would not
//! recognise. On SQLite (no schemas) the same tables live as `codex_kb_ideas`, `codex_kb_tasks`,
//! `codex_kb_task_runs`, with UUIDs and JSON as text.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261123_000002_codex_kb"
    }
}

const POSTGRES: &[&str] = &[
    "CREATE SCHEMA IF NOT EXISTS codex_kb",
    "CREATE TABLE IF NOT EXISTS codex_kb.ideas (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        source_type text NOT NULL,
        source_ref text NOT NULL,
        priority smallint NOT NULL DEFAULT 0,
        status text NOT NULL,
        risk_flags jsonb NOT NULL DEFAULT '{}'::jsonb,
        payload jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT ideas_source_unique UNIQUE (source_type, source_ref)
    )",
    "CREATE TABLE IF NOT EXISTS codex_kb.tasks (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        idea_id uuid NOT NULL REFERENCES codex_kb.ideas(id) ON DELETE CASCADE,
        stage text NOT NULL,
        state text NOT NULL,
        assignee text,
        sla_deadline timestamptz,
        metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT tasks_idea_stage_unique UNIQUE (idea_id, stage)
    )",
    "CREATE INDEX IF NOT EXISTS tasks_state_updated_at_idx ON codex_kb.tasks (state, updated_at DESC)",
    "CREATE TABLE IF NOT EXISTS codex_kb.task_runs (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        task_id uuid NOT NULL REFERENCES codex_kb.tasks(id) ON DELETE CASCADE,
        external_run_id text,
        status text NOT NULL,
        queued_at timestamptz NOT NULL DEFAULT now(),
        started_at timestamptz,
        completed_at timestamptz,
        input_ref text,
        output_ref text,
        retry_count smallint NOT NULL DEFAULT 0,
        error_code text,
        metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        delivery_id text NOT NULL,
        CONSTRAINT task_runs_delivery_unique UNIQUE (delivery_id)
    )",
    "CREATE INDEX IF NOT EXISTS task_runs_task_created_at_idx ON codex_kb.task_runs (task_id, created_at DESC)",
    "CREATE INDEX IF NOT EXISTS task_runs_status_updated_at_idx ON codex_kb.task_runs (status, updated_at DESC)",
];

const SQLITE: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS codex_kb_ideas (
        id text PRIMARY KEY,
        source_type text NOT NULL,
        source_ref text NOT NULL,
        priority integer NOT NULL DEFAULT 0,
        status text NOT NULL,
        risk_flags text NOT NULL DEFAULT '{}',
        payload text NOT NULL,
        created_at text NOT NULL,
        updated_at text NOT NULL,
        CONSTRAINT ideas_source_unique UNIQUE (source_type, source_ref)
    )",
    "CREATE TABLE IF NOT EXISTS codex_kb_tasks (
        id text PRIMARY KEY,
        idea_id text NOT NULL REFERENCES codex_kb_ideas(id) ON DELETE CASCADE,
        stage text NOT NULL,
        state text NOT NULL,
        assignee text,
        sla_deadline text,
        metadata text NOT NULL DEFAULT '{}',
        created_at text NOT NULL,
        updated_at text NOT NULL,
        CONSTRAINT tasks_idea_stage_unique UNIQUE (idea_id, stage)
    )",
    "CREATE INDEX IF NOT EXISTS codex_kb_tasks_state_updated_at_idx ON codex_kb_tasks (state, updated_at DESC)",
    "CREATE TABLE IF NOT EXISTS codex_kb_task_runs (
        id text PRIMARY KEY,
        task_id text NOT NULL REFERENCES codex_kb_tasks(id) ON DELETE CASCADE,
        external_run_id text,
        status text NOT NULL,
        queued_at text NOT NULL,
        started_at text,
        completed_at text,
        input_ref text,
        output_ref text,
        retry_count integer NOT NULL DEFAULT 0,
        error_code text,
        metadata text NOT NULL DEFAULT '{}',
        created_at text NOT NULL,
        updated_at text NOT NULL,
        delivery_id text NOT NULL,
        CONSTRAINT task_runs_delivery_unique UNIQUE (delivery_id)
    )",
    "CREATE INDEX IF NOT EXISTS codex_kb_task_runs_task_created_at_idx ON codex_kb_task_runs (task_id, created_at DESC)",
    "CREATE INDEX IF NOT EXISTS codex_kb_task_runs_status_updated_at_idx ON codex_kb_task_runs (status, updated_at DESC)",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let statements = match m.get_database_backend() {
            DatabaseBackend::Postgres => POSTGRES,
            _ => SQLITE,
        };
        let db = m.get_connection();
        for sql in statements {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, _m: &SchemaManager) -> Result<(), DbErr> {
        // The codex_kb tables belong to the deployment, not to facteur: never dropped.
        Err(DbErr::Migration(
            "the codex_kb schema is shared with other readers and is not dropped".into(),
        ))
    }
}
