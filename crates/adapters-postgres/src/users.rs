//! [`UserRepository`] in PostgreSQL: a user and their account are created in one statement.

use application::{
    ports::{
        security::PasswordHash,
        users::{CreateUserError, StoredCredentials, UserRepository},
    },
    RepositoryError,
};
use async_trait::async_trait;
use diesel::{prelude::*, sql_types::Text};
use diesel_async::RunQueryDsl;
use domain::{Login, UserId};

use crate::{error::from_diesel, prepared::prepared_statement, schema::users, PgStore};

prepared_statement! {
    /// Creates a user and their account; nothing when the login is taken.
    struct CreateUser {
        login: String => Text,
        password_hash: String => Text,
    }
    "WITH u AS (
         INSERT INTO users (login, password_hash) VALUES ($1, $2)
         ON CONFLICT (login) DO NOTHING
         RETURNING id),
     a AS (INSERT INTO accounts (user_id) SELECT id FROM u)
     SELECT id FROM u"
}

#[derive(QueryableByName)]
struct NewUser {
    #[diesel(sql_type = diesel::sql_types::Int8)]
    id: i64,
}

#[async_trait]
impl UserRepository for PgStore {
    async fn create(&self, login: &Login, hash: &PasswordHash) -> Result<UserId, CreateUserError> {
        let mut conn = self.conn().await?;
        let created: Option<NewUser> = CreateUser {
            login: login.as_str().to_owned(),
            password_hash: hash.0.clone(),
        }
        .get_result(&mut conn)
        .await
        .optional()
        .map_err(from_diesel)?;
        self.confirm_synchronous_standby(&mut conn).await?;
        created
            .map(|u| UserId(u.id))
            .ok_or(CreateUserError::LoginTaken)
    }

    async fn find_by_login(
        &self,
        login: &Login,
    ) -> Result<Option<StoredCredentials>, RepositoryError> {
        let mut conn = self.conn().await?;
        let found: Option<(i64, String)> = users::table
            .filter(users::login.eq(login.as_str()))
            .select((users::id, users::password_hash))
            .first(&mut conn)
            .await
            .optional()
            .map_err(from_diesel)?;
        Ok(found.map(|(id, hash)| StoredCredentials {
            id: UserId(id),
            password_hash: PasswordHash(hash),
        }))
    }
}
