// stockmesh console: shop and admin pages over the services' public API on
// this origin. No framework and no third-party code: pages are built with
// DOM calls (never innerHTML with data, so API text cannot become markup),
// routes are `#/...` fragments, the session is the services' HttpOnly
// cookie (refreshed on 401), and notifications arrive live over
// server-sent events.
"use strict";

const state = { me: null, config: { jaeger_ui_url: null }, stream: null, unread: 0, timers: [] };

// ---------------------------------------------------------------- helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function money(m) {
  if (!m) return "";
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency: m.currency }).format(m.amount_minor / 100);
  } catch (_) {
    return (m.amount_minor / 100).toFixed(2) + " " + m.currency;
  }
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function flash(message, kind) {
  const box = document.getElementById("flash");
  box.className = kind || "info";
  box.textContent = message;
  if (kind !== "error") setTimeout(() => { if (box.textContent === message) box.textContent = ""; }, 6000);
}

function announce(message) {
  document.getElementById("live").textContent = message;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let refreshing = null;

async function refreshSession() {
  if (!refreshing) {
    refreshing = fetch("/api/users/refresh", { method: "POST", credentials: "same-origin" })
      .then((r) => r.ok)
      .catch(() => false)
      .finally(() => setTimeout(() => { refreshing = null; }, 0));
  }
  return refreshing;
}

// One API call; a 401 refreshes the session once and tries again. Errors
// carry the API's own message.
async function api(method, path, body, extraHeaders, retried) {
  const headers = Object.assign({ accept: "application/json" }, extraHeaders || {});
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (_) {
    throw new ApiError(0, "network", "The server cannot be reached. Check your connection and try again.");
  }
  if (response.status === 401 && !retried && !path.startsWith("/api/users/login") && !path.startsWith("/api/users/refresh")) {
    if (await refreshSession()) return api(method, path, body, extraHeaders, true);
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!response.ok) {
    const error = (data && data.error) || {};
    let message = error.message || response.statusText || "Request failed";
    if (response.status === 401 && state.me) message = "Your session has ended. Please log in again.";
    throw new ApiError(response.status, error.code || String(response.status), message);
  }
  return { data, headers: response.headers };
}

function showError(err) {
  flash(err.message || String(err), "error");
}

function clearTimers() {
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
}

function every(ms, fn) {
  state.timers.push(setInterval(() => { if (!document.hidden) fn(); }, ms));
}

function traceLink(traceId) {
  if (!traceId || !state.config.jaeger_ui_url) return null;
  return h("a", { href: state.config.jaeger_ui_url + "/trace/" + encodeURIComponent(traceId), target: "_blank", rel: "noopener", "data-trace": traceId }, "Trace");
}

function field(label, input) {
  return h("label", {}, label, input);
}

function setMain(title, ...content) {
  const main = document.getElementById("main");
  main.replaceChildren(h("h1", {}, title), ...content);
  document.title = title + " · stockmesh";
}

// ------------------------------------------------------- session and nav

async function loadMe() {
  try {
    state.me = (await api("GET", "/api/users/me")).data;
  } catch (_) {
    state.me = null;
  }
  renderNav();
  if (state.me) {
    openStream();
    refreshUnread();
  } else {
    closeStream();
  }
}

function renderNav() {
  const role = state.me ? state.me.role : null;
  for (const item of document.querySelectorAll("[data-when]")) {
    const want = item.getAttribute("data-when");
    item.hidden = !(want === "anon" ? !role : want === "user" ? !!role : role === "admin");
  }
  document.getElementById("who").textContent = state.me ? "(" + state.me.email + ")" : "";
  const page = (location.hash.replace(/^#\//, "").split("/")[0] || "shop");
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.getAttribute("data-nav") === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function setUnread(n) {
  state.unread = Math.max(0, n);
  const badge = document.getElementById("unread");
  badge.textContent = String(state.unread);
  badge.hidden = state.unread === 0;
  badge.setAttribute("aria-label", state.unread + " unread notifications");
}

async function refreshUnread() {
  try {
    const page = (await api("GET", "/api/notifications?limit=1")).data;
    setUnread(page.unread);
  } catch (_) { /* shown when the page is opened */ }
}

// ------------------------------------------------- live notifications

function closeStream() {
  if (state.stream) state.stream.close();
  state.stream = null;
}

// One EventSource per tab. The browser reconnects by itself (sending
// Last-Event-ID, so nothing stored meanwhile is missed); when the stream is
// refused (expired access token) the session is refreshed and it reopens.
function openStream() {
  if (state.stream || typeof EventSource === "undefined") return;
  const source = new EventSource("/api/notifications/stream");
  state.stream = source;
  source.addEventListener("notification", (event) => {
    let note;
    try { note = JSON.parse(event.data); } catch (_) { return; }
    setUnread(state.unread + (note.read_at ? 0 : 1));
    announce("New notification: " + note.message);
    flash(note.message, "info");
    const list = document.getElementById("notification-list");
    if (list && !list.querySelector('[data-id="' + note.id + '"]')) {
      list.prepend(noteItem(note));
      const empty = document.getElementById("no-notifications");
      if (empty) empty.remove();
    }
    if (location.hash.startsWith("#/orders")) route();
  });
  source.addEventListener("resync", () => {
    refreshUnread();
    if (location.hash.startsWith("#/notifications")) route();
  });
  source.addEventListener("expired", () => reopenStream());
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) reopenStream();
  });
}

async function reopenStream() {
  closeStream();
  if (!state.me) return;
  await refreshSession();
  setTimeout(() => { if (state.me) openStream(); }, 1000);
}

// ------------------------------------------------------------ shopper

async function shopPage(params) {
  const query = params.get("q") || "";
  const search = h("input", { type: "search", name: "q", id: "search", value: query, maxlength: "100" });
  const grid = h("div", { class: "grid", id: "catalog", "aria-live": "polite" });
  const form = h("form", { class: "inline", role: "search", onsubmit: (e) => {
    e.preventDefault();
    location.hash = "#/" + (search.value.trim() ? "?q=" + encodeURIComponent(search.value.trim()) : "");
  } }, field("Search products", search), h("button", { type: "submit" }, "Search"));
  setMain("Shop", form, grid);
  const quantities = new Map();
  const draw = async () => {
    let page;
    try {
      page = (await api("GET", "/api/products?limit=100" + (query ? "&q=" + encodeURIComponent(query) : ""))).data;
    } catch (err) { showError(err); return; }
    // Keep what the shopper typed across refreshes.
    for (const input of grid.querySelectorAll("input[data-qty]")) quantities.set(input.getAttribute("data-qty"), input.value);
    grid.replaceChildren(...(page.items.length ? page.items.map((p) => productCard(p, quantities.get(p.id))) :
      [h("p", { class: "muted" }, query ? "No products match “" + query + "”." : "No products yet.")]));
  };
  await draw();
  // Stock changes (orders, an admin) show without a reload.
  every(3000, draw);
}

function productCard(p, qty) {
  const stockText = p.stock === null || p.stock === undefined ? "Stock unknown" : p.stock > 0 ? p.stock + " in stock" : "Out of stock";
  const amount = h("input", { type: "number", min: "1", max: "1000", value: qty || "1", id: "qty-" + p.id, "data-qty": p.id });
  const canOrder = !!state.me && p.stock !== 0;
  return h("article", { class: "card", "data-product": p.name, "data-id": p.id },
    h("h2", {}, p.name),
    p.description ? h("p", { class: "muted" }, p.description) : null,
    h("div", { class: "price" }, money(p.price)),
    h("div", { class: "stock" + (p.stock === 0 ? " out" : ""), "data-stock": p.stock === null ? "" : String(p.stock) }, stockText),
    state.me
      ? h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); placeOrder(p, amount); } },
          h("label", { for: "qty-" + p.id, class: "visually-hidden" }, "Quantity of " + p.name), amount,
          h("button", { type: "submit", disabled: !canOrder, "data-order": p.name }, "Order"))
      : h("a", { href: "#/login" }, "Log in to order"));
}

async function placeOrder(product, amountInput) {
  const quantity = Number(amountInput.value);
  if (!Number.isInteger(quantity) || quantity < 1 || quantity > 1000) {
    flash("Quantity must be a whole number from 1 to 1000.", "error");
    amountInput.focus();
    return;
  }
  const key = crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random();
  try {
    const order = (await api("POST", "/api/orders", { product_id: product.id, quantity }, { "idempotency-key": key })).data;
    flash("Order " + order.status.toLowerCase() + ": " + order.quantity + " × " + order.product_name + " (" + money(order.total) + ")", "info");
    announce("Order placed");
    route();
  } catch (err) { showError(err); }
}

async function ordersPage() {
  if (!requireLogin()) return;
  const body = h("tbody", { id: "order-rows" });
  setMain("My orders", h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Placed"), h("th", { scope: "col" }, "Product"),
      h("th", { scope: "col" }, "Qty"), h("th", { scope: "col" }, "Total"), h("th", { scope: "col" }, "Status"), h("th", { scope: "col" }, "Actions"))),
    body)));
  try {
    const page = (await api("GET", "/api/orders?limit=100")).data;
    if (!page.items.length) body.append(h("tr", {}, h("td", { colspan: "6", class: "muted" }, "No orders yet.")));
    for (const o of page.items) body.append(orderRow(o, false));
  } catch (err) { showError(err); }
}

function orderRow(o, admin) {
  const cancel = o.status === "CONFIRMED" && !admin
    ? h("button", { type: "button", class: "secondary", "data-cancel": o.id, onclick: async (e) => {
        e.target.disabled = true;
        try {
          await api("POST", "/api/orders/" + o.id + "/cancel");
          flash("Order of " + o.product_name + " cancelled.", "info");
          route();
        } catch (err) { e.target.disabled = false; showError(err); }
      } }, "Cancel")
    : null;
  return h("tr", { "data-order-id": o.id },
    h("td", {}, when(o.created_at)),
    admin ? h("td", { class: "hide-narrow" }, h("code", {}, o.user_id)) : null,
    h("td", {}, o.product_name),
    h("td", {}, String(o.quantity)),
    h("td", {}, money(o.total)),
    h("td", {}, h("span", { class: "status " + o.status, "data-status": o.status }, o.status), o.failure_reason ? h("div", { class: "muted" }, o.failure_reason) : null),
    h("td", {}, h("div", { class: "row" }, cancel, traceLink(o.trace_id))));
}

function noteItem(n) {
  const item = h("li", { class: n.read_at ? "" : "unread", "data-id": n.id },
    h("div", {}, h("div", {}, n.message), h("div", { class: "muted" }, when(n.created_at))));
  if (!n.read_at) {
    item.append(h("button", { type: "button", class: "secondary", onclick: async (e) => {
      e.target.disabled = true;
      try {
        await api("POST", "/api/notifications/" + n.id + "/read");
        item.classList.remove("unread");
        e.target.remove();
        setUnread(state.unread - 1);
      } catch (err) { e.target.disabled = false; showError(err); }
    } }, "Mark read"));
  }
  return item;
}

async function notificationsPage() {
  if (!requireLogin()) return;
  const list = h("ul", { class: "notes", id: "notification-list" });
  setMain("Notifications", h("p", { class: "muted" }, "New notifications appear here as they arrive."), list);
  try {
    const page = (await api("GET", "/api/notifications?limit=100")).data;
    setUnread(page.unread);
    if (!page.items.length) list.before(h("p", { id: "no-notifications" }, "No notifications yet."));
    for (const n of page.items) list.append(noteItem(n));
  } catch (err) { showError(err); }
}

function requireLogin() {
  if (state.me) return true;
  setMain("Log in required", h("p", {}, "Please ", h("a", { href: "#/login" }, "log in"), " to see this page."));
  return false;
}

function loginPage() {
  const email = h("input", { type: "email", name: "email", id: "email", autocomplete: "username", required: true, maxlength: "254" });
  const password = h("input", { type: "password", name: "password", id: "password", autocomplete: "current-password", required: true, maxlength: "128" });
  setMain("Log in", h("form", { class: "stack", onsubmit: async (e) => {
    e.preventDefault();
    try {
      await api("POST", "/api/users/login", { email: email.value, password: password.value });
      await loadMe();
      flash("Welcome back.", "info");
      location.hash = "#/";
    } catch (err) { showError(err); }
  } }, field("Email", email), field("Password", password), h("button", { type: "submit" }, "Log in")),
  h("p", {}, "No account? ", h("a", { href: "#/register" }, "Register")));
  email.focus();
}

function registerPage() {
  const name = h("input", { name: "name", id: "name", autocomplete: "name", required: true, maxlength: "100" });
  const email = h("input", { type: "email", name: "email", id: "email", autocomplete: "username", required: true, maxlength: "254" });
  const password = h("input", { type: "password", name: "password", id: "password", autocomplete: "new-password", required: true, minlength: "8", maxlength: "128" });
  setMain("Register", h("form", { class: "stack", onsubmit: async (e) => {
    e.preventDefault();
    try {
      await api("POST", "/api/users/register", { name: name.value, email: email.value, password: password.value });
      await api("POST", "/api/users/login", { email: email.value, password: password.value });
      await loadMe();
      flash("Account created. Happy shopping!", "info");
      location.hash = "#/";
    } catch (err) { showError(err); }
  } }, field("Name", name), field("Email", email), field("Password (at least 8 characters)", password),
  h("button", { type: "submit" }, "Create account")));
  name.focus();
}

// -------------------------------------------------------------- admin

function adminNav(current) {
  const links = [["products", "Products"], ["orders", "Orders"], ["users", "Users"], ["system", "System"]];
  return h("nav", { class: "subnav", "aria-label": "Admin" }, links.map(([id, label]) =>
    h("a", { href: "#/admin/" + id, "aria-current": id === current ? "page" : null }, label)));
}

function requireAdmin() {
  if (!requireLogin()) return false;
  if (state.me.role === "admin") return true;
  setMain("Administrators only", h("p", { id: "forbidden" }, "This page is for administrators."));
  return false;
}

async function adminProductsPage() {
  if (!requireAdmin()) return;
  const name = h("input", { name: "name", id: "new-name", required: true, maxlength: "200" });
  const description = h("input", { name: "description", id: "new-description", maxlength: "2000" });
  const price = h("input", { type: "number", name: "price", id: "new-price", min: "0", step: "0.01", required: true });
  const currency = h("input", { name: "currency", id: "new-currency", value: "EUR", required: true, maxlength: "3", minlength: "3", size: "4" });
  const stock = h("input", { type: "number", name: "stock", id: "new-stock", min: "0", value: "0", required: true });
  const rows = h("tbody", { id: "admin-products" });
  const create = h("form", { class: "inline", "aria-label": "New product", onsubmit: async (e) => {
    e.preventDefault();
    try {
      await api("POST", "/api/products", {
        name: name.value, description: description.value,
        price: { amount_minor: Math.round(Number(price.value) * 100), currency: currency.value.trim().toUpperCase() },
        initial_stock: Number(stock.value),
      });
      flash("Product " + name.value + " created.", "info");
      e.target.reset();
      currency.value = "EUR";
      await draw();
    } catch (err) { showError(err); }
  } }, field("Name", name), field("Description", description), field("Price", price), field("Currency", currency),
    field("Initial stock", stock), h("button", { type: "submit" }, "Create product"));
  setMain("Admin · Products", adminNav("products"), h("h2", {}, "New product"), create, h("h2", {}, "Catalog"),
    h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Name"), h("th", { scope: "col" }, "Price"), h("th", { scope: "col" }, "Stock"), h("th", { scope: "col" }, "Actions"))), rows)));
  const draw = async () => {
    try {
      const page = (await api("GET", "/api/products?limit=100")).data;
      rows.replaceChildren(...page.items.map(adminProductRow(draw)));
    } catch (err) { showError(err); }
  };
  await draw();
}

function adminProductRow(redraw) {
  return (p) => {
    const name = h("input", { value: p.name, maxlength: "200", id: "name-" + p.id });
    const price = h("input", { type: "number", min: "0", step: "0.01", value: (p.price.amount_minor / 100).toFixed(2), id: "price-" + p.id });
    const stock = h("input", { type: "number", min: "0", value: p.stock === null ? "" : String(p.stock), id: "stock-" + p.id, "data-set-stock": p.name });
    const act = (label, attrs, fn) => h("button", Object.assign({ type: "button", class: "secondary" }, attrs, {
      onclick: async (e) => {
        e.target.disabled = true;
        try { await fn(); await redraw(); } catch (err) { showError(err); } finally { e.target.disabled = false; }
      } }), label);
    return h("tr", { "data-admin-product": p.name },
      h("td", {}, h("label", { for: "name-" + p.id, class: "visually-hidden" }, "Name of " + p.name), name),
      h("td", {}, h("label", { for: "price-" + p.id, class: "visually-hidden" }, "Price of " + p.name + " in " + p.price.currency), price, " " + p.price.currency),
      h("td", {}, h("label", { for: "stock-" + p.id, class: "visually-hidden" }, "Stock of " + p.name), stock),
      h("td", {}, h("div", { class: "row" },
        act("Save", { "data-save": p.name }, async () => {
          await api("PATCH", "/api/products/" + p.id, { name: name.value, price: { amount_minor: Math.round(Number(price.value) * 100), currency: p.price.currency } });
          flash("Saved " + name.value + ".", "info");
        }),
        act("Set stock", { "data-stock-button": p.name }, async () => {
          await api("PUT", "/api/products/" + p.id + "/stock", { quantity: Number(stock.value) });
          flash("Stock of " + p.name + " is now " + stock.value + ".", "info");
        }),
        act("Delete", { class: "danger", "data-delete": p.name }, async () => {
          if (!confirm("Delete " + p.name + "?")) return;
          await api("DELETE", "/api/products/" + p.id);
          flash("Deleted " + p.name + ".", "info");
        }))));
  };
}

async function adminOrdersPage(params) {
  if (!requireAdmin()) return;
  const status = h("select", { name: "status", id: "filter-status" },
    ["", "PENDING", "CONFIRMED", "REJECTED", "FAILED", "CANCELLED"].map((s) =>
      h("option", { value: s, selected: params.get("status") === s }, s || "Any")));
  const user = h("input", { name: "user_id", id: "filter-user", value: params.get("user_id") || "", placeholder: "user id" });
  const product = h("input", { name: "product_id", id: "filter-product", value: params.get("product_id") || "", placeholder: "product id" });
  const form = h("form", { class: "inline", "aria-label": "Filter orders", onsubmit: (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    if (status.value) q.set("status", status.value);
    if (user.value.trim()) q.set("user_id", user.value.trim());
    if (product.value.trim()) q.set("product_id", product.value.trim());
    location.hash = "#/admin/orders?" + q.toString();
  } }, field("Status", status), field("User", user), field("Product", product), h("button", { type: "submit" }, "Filter"));
  const rows = h("tbody", { id: "admin-orders" });
  const total = h("p", { class: "muted", id: "orders-total" });
  setMain("Admin · Orders", adminNav("orders"), form, total, h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Placed"), h("th", { scope: "col", class: "hide-narrow" }, "User"),
      h("th", { scope: "col" }, "Product"), h("th", { scope: "col" }, "Qty"), h("th", { scope: "col" }, "Total"),
      h("th", { scope: "col" }, "Status"), h("th", { scope: "col" }, "Trace"))), rows)));
  const q = new URLSearchParams(params);
  q.set("scope", "all");
  q.set("limit", "100");
  try {
    const page = (await api("GET", "/api/orders?" + q.toString())).data;
    total.textContent = page.total + " orders" + (page.total > page.items.length ? ", newest " + page.items.length + " shown" : "");
    rows.replaceChildren(...page.items.map((o) => orderRow(o, true)));
  } catch (err) { showError(err); }
}

async function adminUsersPage() {
  if (!requireAdmin()) return;
  const rows = h("tbody", { id: "admin-users" });
  setMain("Admin · Users", adminNav("users"), h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Email"), h("th", { scope: "col" }, "Name"),
      h("th", { scope: "col" }, "Role"), h("th", { scope: "col" }, "Since"))), rows)));
  try {
    const page = (await api("GET", "/api/users?limit=100")).data;
    rows.replaceChildren(...page.items.map((u) => {
      const role = h("select", { id: "role-" + u.id, "data-role": u.email },
        ["user", "admin"].map((r) => h("option", { value: r, selected: u.role === r }, r)));
      const save = h("button", { type: "button", class: "secondary", onclick: async (e) => {
        e.target.disabled = true;
        try {
          await api("PATCH", "/api/users/" + u.id, { role: role.value });
          flash(u.email + " is now " + role.value + ".", "info");
        } catch (err) { showError(err); } finally { e.target.disabled = false; }
      } }, "Save role");
      return h("tr", {}, h("td", {}, u.email), h("td", {}, u.name),
        h("td", {}, h("div", { class: "row" }, h("label", { for: "role-" + u.id, class: "visually-hidden" }, "Role of " + u.email), role, save)),
        h("td", {}, when(u.created_at)));
    }));
  } catch (err) { showError(err); }
}

async function adminSystemPage() {
  if (!requireAdmin()) return;
  const cards = h("div", { class: "services", id: "services" });
  setMain("Admin · System", adminNav("system"), h("p", { class: "muted" }, "Each service as one of its replicas answers; refreshed every 5 s."), cards);
  const draw = async () => {
    try {
      const view = (await api("GET", "/api/console/system")).data;
      cards.replaceChildren(...view.services.map(serviceCard));
    } catch (err) { showError(err); }
  };
  await draw();
  every(5000, draw);
}

function serviceCard(s) {
  const checks = s.readiness && Array.isArray(s.readiness.checks) ? s.readiness.checks : [];
  return h("section", { class: "card", "data-service": s.name, "aria-label": s.name },
    h("h2", {}, s.name, " ", h("span", { class: s.ready ? "ok" : "bad", "data-ready": String(s.ready) }, s.ready ? "ready" : "not ready")),
    s.error ? h("p", { class: "bad" }, s.error) : null,
    checks.length ? h("ul", { class: "checks" }, checks.map((c) => h("li", { class: c.ok ? "ok" : "bad" },
      (c.name || "check") + ": " + (c.ok ? "ok" : "failing") + (c.required === false ? " (reported, not required)" : "") +
      (c.error ? " — " + c.error : "")))) : null,
    s.breakers.length ? h("p", {}, "Breakers: ", s.breakers.map((b) => h("span", { class: b.state === "closed" ? "ok" : "bad" }, b.upstream + " " + b.state + " "))) : null,
    s.outbox_backlog !== null && s.outbox_backlog !== undefined ? h("p", {}, "Outbox backlog: " + s.outbox_backlog) : null,
    s.dead_letter_depth !== null && s.dead_letter_depth !== undefined
      ? h("p", { class: s.dead_letter_depth > 0 ? "bad" : "" }, "Dead letters: " + (s.dead_letter_depth < 0 ? "not known yet" : s.dead_letter_depth)) : null);
}

// ------------------------------------------------------------- router

const routes = {
  "": shopPage,
  orders: ordersPage,
  notifications: notificationsPage,
  login: loginPage,
  register: registerPage,
  "admin/products": adminProductsPage,
  admin: adminProductsPage,
  "admin/orders": adminOrdersPage,
  "admin/users": adminUsersPage,
  "admin/system": adminSystemPage,
};

async function route() {
  clearTimers();
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query] = raw.split("?");
  const page = routes[path] || (() => setMain("Not found", h("p", {}, "No such page. ", h("a", { href: "#/" }, "Back to the shop"))));
  renderNav();
  await page(new URLSearchParams(query || ""));
}

async function start() {
  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("POST", "/api/users/logout"); } catch (_) { /* the session is gone either way */ }
    state.me = null;
    closeStream();
    setUnread(0);
    renderNav();
    flash("Logged out.", "info");
    location.hash = "#/";
    route();
  });
  try { state.config = (await api("GET", "/api/console/config")).data || state.config; } catch (_) { /* no trace links */ }
  await loadMe();
  window.addEventListener("hashchange", () => { document.getElementById("flash").textContent = ""; route(); });
  await route();
}

start();
