import { newKey } from './derive-key.js';
import { type IdempotentRequestInit, idempotentFetch } from './fetch.js';
import type { RetryOptions } from './retry.js';

/** Options of `guardForm`. */
export interface GuardFormOptions {
  /** Where the form is sent. @default the form's `action` */
  url?: string;
  /** How each submission is retried. @default {} (see `RetryOptions`) */
  retry?: RetryOptions;
  /** More of fetch's init for every submission (headers, credentials…). @default {} */
  init?: Omit<IdempotentRequestInit, 'body' | 'method' | 'idempotencyKey' | 'signal' | 'retry'>;
  /** Receives the final response of a submission; also dispatched as an `idempotent-response` event. @default undefined */
  onResponse?: (response: Response, key: string) => unknown;
  /** Receives a submission's error; also dispatched as an `idempotent-error` event. @default undefined */
  onError?: (error: unknown, key: string) => unknown;
  /** The fetch to send with. @default globalThis.fetch */
  fetch?: typeof fetch;
}

/** What `idempotent-response` and `idempotent-error` events carry in `detail`. */
export interface GuardFormEventDetail {
  key: string;
  response?: Response;
  error?: unknown;
}

/**
 * Guards a browser form against the double submit (the seed's double-click): each submission gets
 * one Idempotency-Key, kept across its retries; while it is pending, the form's submit buttons are
 * disabled, `aria-busy` is set and further submits are ignored; on completion all is restored.
 * A form whose method is GET is left to the browser. Returns a function that removes the guard.
 */
export function guardForm(form: HTMLFormElement, options: GuardFormOptions = {}): () => void {
  let pending = false;
  const onSubmit = (event: SubmitEvent) => {
    const method = (form.getAttribute('method') ?? 'get').toUpperCase();
    if (method === 'GET' || method === 'DIALOG') return;
    event.preventDefault();
    if (pending) return;
    pending = true;
    const key = newKey();
    const buttons = submitButtons(form);
    const wasDisabled = buttons.map((button) => button.disabled);
    for (const button of buttons) button.disabled = true;
    form.setAttribute('aria-busy', 'true');
    const report = (detail: GuardFormEventDetail) => {
      const type = detail.error === undefined ? 'idempotent-response' : 'idempotent-error';
      form.dispatchEvent(new CustomEvent<GuardFormEventDetail>(type, { detail }));
    };
    idempotentFetch(options.url ?? form.action, {
      ...options.init,
      method,
      body: bodyOf(form, event.submitter),
      idempotencyKey: key,
      ...(options.retry === undefined ? {} : { retry: options.retry }),
      ...(options.fetch === undefined ? {} : { fetch: options.fetch }),
    })
      .then(
        async (response) => {
          report({ key, response });
          await options.onResponse?.(response, key);
        },
        async (error: unknown) => {
          report({ key, error });
          await options.onError?.(error, key);
        },
      )
      .finally(() => {
        pending = false;
        buttons.forEach((button, i) => {
          button.disabled = wasDisabled[i] ?? false;
        });
        form.removeAttribute('aria-busy');
      })
      // A callback that throws is the page's bug: reported as the browser reports uncaught errors.
      .catch((error: unknown) => (globalThis.reportError ?? console.error)(error));
  };
  form.addEventListener('submit', onSubmit);
  return () => form.removeEventListener('submit', onSubmit);
}

type SubmitControl = HTMLButtonElement | HTMLInputElement;

function submitButtons(form: HTMLFormElement): SubmitControl[] {
  return [...form.elements].filter(
    (element): element is SubmitControl =>
      (element instanceof HTMLButtonElement && element.type === 'submit') ||
      (element instanceof HTMLInputElement && (element.type === 'submit' || element.type === 'image')),
  );
}

/** The body the browser would send: multipart for `multipart/form-data`, else urlencoded. */
function bodyOf(form: HTMLFormElement, submitter: HTMLElement | null): FormData | URLSearchParams {
  const data = new FormData(form);
  // The clicked button's name=value is part of a submission (HTML, "constructing the entry list").
  if (
    (submitter instanceof HTMLButtonElement || submitter instanceof HTMLInputElement) &&
    submitter.name !== ''
  ) {
    data.append(submitter.name, submitter.value);
  }
  if (form.enctype === 'multipart/form-data') return data;
  const params = new URLSearchParams();
  for (const [name, value] of data) params.append(name, typeof value === 'string' ? value : value.name);
  return params;
}
