//! Gophermart's domain: the values a customer's points account is made of and the rules that
//! make them valid. Nothing here knows about HTTP, SQL or any framework; invalid values cannot
//! be constructed.

mod credentials;
mod ledger;
mod money;
mod order;
mod order_number;

pub use credentials::{
    Login, LoginError, Password, PasswordError, MAX_LOGIN_CHARS, MAX_PASSWORD_CHARS,
};
pub use ledger::{Balance, Withdrawal};
pub use money::{Money, MoneyError};
pub use order::{AccrualStatus, Order, OrderStatus, UserId};
pub use order_number::{with_check_digit, OrderNumber, OrderNumberError, MAX_ORDER_NUMBER_LEN};
