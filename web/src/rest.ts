// The original REST API from a browser, as the original frontend (axios, src/lib/api.ts) uses it:
// register with JSON (its form sends the is_admin checkbox), log in with OAuth 2's urlencoded
// password form, then create, edit (PUT with the changed fields), change the status, list and
// delete tasks, with `Authorization: Bearer` on every call; and read an error's status, detail
// and request id, which CORS must let page code see.

const PASSWORD = "correct horse battery";

interface Answer {
  status: number;
  body: any;
  requestId: string;
}

async function call(
  baseUrl: string,
  method: string,
  path: string,
  token: string | null,
  body?: unknown,
): Promise<Answer> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`${baseUrl}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return {
    status: response.status,
    body: await response.json(),
    requestId: response.headers.get("x-request-id") ?? "",
  };
}

export async function runRest(baseUrl: string): Promise<Record<string, unknown>> {
  const email = `browser-rest-${Date.now()}@example.com`;
  const registered = await call(baseUrl, "POST", "/api/v1/auth/register", null, {
    email,
    password: PASSWORD,
    is_admin: true,
  });
  const form = new URLSearchParams({ username: email, password: PASSWORD });
  const loginResponse = await fetch(`${baseUrl}/api/v1/auth/login`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: form,
  });
  const login = await loginResponse.json();
  const token: string = login.access_token;

  const created = await call(baseUrl, "POST", "/api/v1/tasks/", token, {
    title: "from the original frontend",
    description: "created over REST",
  });
  const id: number = created.body.id;
  await call(baseUrl, "PUT", `/api/v1/tasks/${id}`, token, { title: "edited over REST" });
  const done = await call(baseUrl, "PUT", `/api/v1/tasks/${id}`, token, { status: "done" });
  const second = await call(baseUrl, "POST", "/api/v1/tasks/", token, { title: "to delete" });
  const listed = await call(baseUrl, "GET", "/api/v1/tasks/", token);
  const deleted = await call(baseUrl, "DELETE", `/api/v1/tasks/${second.body.id}`, token);
  const after = await call(baseUrl, "GET", "/api/v1/tasks/", token);
  const missing = await call(baseUrl, "GET", `/api/v1/tasks/${second.body.id}`, token);
  const anonymous = await call(baseUrl, "GET", "/api/v1/users/me", null);

  return {
    protocol: "rest",
    email,
    registeredAdmin: registered.body.is_admin,
    loginUserId: login.user_id,
    userId: registered.body.user_id,
    owner: created.body.owner?.email,
    edited: { title: done.body.title, status: done.body.status },
    titles: listed.body.map((task: { title: string }) => task.title),
    deleted: deleted.body.message,
    titlesAfter: after.body.map((task: { title: string }) => task.title),
    notFound: { status: missing.status, detail: missing.body.detail },
    unauthenticated: anonymous.status,
    errorRequestId: missing.requestId,
  };
}
