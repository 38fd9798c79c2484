/* udsproxy.codec._scan: a strict scanner for the common HTTP/1.1 message head, in C.
 *
 * The codec's fast path (codec/request.py, codec/response.py). One call reads a whole head from
 * a buffer and returns its pieces, where llhttp would make one Python callback per header. It
 * accepts only a strict subset of what llhttp accepts, and for that subset it reports what the
 * llhttp path would: anything else (an incomplete head, a body to frame, an unusual byte, a
 * header that steers framing, a limit reached) returns None and the caller hands the same bytes
 * to llhttp, which keeps every rule and every error reply. So the subset may only ever shrink
 * the fast path's reach, never change an answer.
 *
 * No I/O, no state but the constant tables set once by configure().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* RFC 9110 tchar, lower-cased; 0 for any other byte */
static unsigned char NAME[256];
/* request-target bytes taken by the fast path: RFC 3986 pchar, "/" and "?" */
static unsigned char TARGET[256];
/* field-vchar without obs-text, plus SP and HTAB */
static unsigned char VALUE[256];

static PyObject *special_request; /* frozenset: names RequestHead.add_header handles */
static unsigned char AUTHORITY[256]; /* Host bytes RequestHead.add_header accepts */
static int configured;                /* scan_request falls back until configure() ran */
static PyObject *method_get, *method_head;

/* Header names most requests and responses carry, shared instead of allocated: their hash is
 * computed once, so every later set or dict lookup of them is cheaper too. */
static const char *const COMMON[] = {
    "host", "user-agent", "accept", "accept-language", "accept-encoding", "referer",
    "connection", "cookie", "upgrade-insecure-requests", "sec-fetch-dest", "sec-fetch-mode",
    "sec-fetch-site", "sec-fetch-user", "priority", "if-modified-since", "if-none-match",
    "cache-control", "x-forwarded-for", "x-forwarded-proto", "x-request-id", "content-type",
    "date", "server", "content-length", "last-modified", "etag", "accept-ranges", "expires",
    "vary", "content-encoding", "location", "set-cookie", "pragma", "authorization", "origin",
    "dnt", "sec-ch-ua", "sec-ch-ua-mobile", "sec-ch-ua-platform", "x-requested-with",
    "keep-alive", "strict-transport-security", "x-content-type-options", "x-frame-options",
    "access-control-allow-origin", "age", "x-cache", "content-security-policy",
    "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection", "expect",
};
#define N_COMMON (sizeof(COMMON) / sizeof(COMMON[0]))
#define MAX_COMMON_LEN 32
static PyObject *common_obj[N_COMMON];
/* by length: the indices of the common names of that length, -1 ended */
static signed char by_len[MAX_COMMON_LEN + 1][8];

#define MAX_NAME 128 /* longer names fall back to llhttp */

static PyObject *
name_object(const char *lower, Py_ssize_t n)
{
    if (n <= MAX_COMMON_LEN) {
        for (const signed char *i = by_len[n]; *i >= 0; i++) {
            const char *c = COMMON[*i];
            if (c[0] == lower[0] && memcmp(c, lower, n) == 0) {
                Py_INCREF(common_obj[*i]);
                return common_obj[*i];
            }
        }
    }
    return PyBytes_FromStringAndSize(lower, n);
}

/* a name of known length against a literal */
#define EQ(a, n, lit) ((n) == (Py_ssize_t)sizeof(lit) - 1 && memcmp((a), (lit), (n)) == 0)

static int
eq_nocase(const char *a, Py_ssize_t n, const char *lit)
{
    Py_ssize_t m = (Py_ssize_t)strlen(lit);
    if (n != m)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)a[i];
        if (c >= 'A' && c <= 'Z')
            c += 32;
        if (c != (unsigned char)lit[i])
            return 0;
    }
    return 1;
}

/* One header line at p (inside [p, e)). On success fills the lower-cased name (into lower),
 * the value's span, and returns the offset just past the line's CRLF; 0 means "not for the
 * fast path" (or the blank line that ends the head: then *blank is set). */
static Py_ssize_t
header_line(const char *buf, Py_ssize_t p, Py_ssize_t e, char *lower, Py_ssize_t *name_len,
            Py_ssize_t *vstart, Py_ssize_t *vlen, int *blank, int underscores_ok)
{
    *blank = 0;
    if (p + 1 < e && buf[p] == '\r' && buf[p + 1] == '\n') {
        *blank = 1;
        return p + 2;
    }
    Py_ssize_t n = 0, stop = e - p < MAX_NAME ? e : p + MAX_NAME;
    for (; p < stop; p++) {
        unsigned char l = NAME[(unsigned char)buf[p]];
        if (l == 0)
            break;
        lower[n++] = (char)l;
    }
    if (p >= stop || buf[p] != ':' || n == 0)
        return 0;
    if (!underscores_ok && memchr(lower, '_', n) != NULL)
        return 0;
    p++; /* ':' */
    while (p < e && (buf[p] == ' ' || buf[p] == '\t'))
        p++;
    Py_ssize_t v = p;
    while (p < e && VALUE[(unsigned char)buf[p]])
        p++;
    /* llhttp keeps trailing whitespace in the value; an empty value is reported differently
     * by httptools: both are left to it */
    if (p == v || buf[p - 1] == ' ' || buf[p - 1] == '\t')
        return 0;
    if (p + 1 >= e || buf[p] != '\r' || buf[p + 1] != '\n')
        return 0;
    *name_len = n;
    *vstart = v;
    *vlen = p - v;
    return p + 2;
}

static PyObject *
append_pair(PyObject *list, PyObject *name, const char *value, Py_ssize_t vlen)
{
    PyObject *v = PyBytes_FromStringAndSize(value, vlen);
    if (v == NULL) {
        Py_DECREF(name);
        return NULL;
    }
    PyObject *t = PyTuple_New(2);
    if (t == NULL) {
        Py_DECREF(name);
        Py_DECREF(v);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, name); /* steals both */
    PyTuple_SET_ITEM(t, 1, v);
    int r = PyList_Append(list, t);
    Py_DECREF(t);
    return r < 0 ? NULL : list;
}

/* scan_request(data, pos, max_bytes, max_count, underscores_ok)
 *   -> (end, method, url, headers, specials, request_id_seen) or None
 *
 * A GET or HEAD in origin-form, HTTP/1.1, with no body: no Content-Length, Transfer-Encoding,
 * Upgrade or Expect, and Connection absent or "keep-alive". headers are the (lower-case name,
 * value) pairs to forward in order, x-request-id among them; specials the pairs
 * RequestHead.add_header takes. Limits as RequestDecoder counts them: reaching one falls back,
 * so the llhttp path answers it. */
static PyObject *
scan_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scan_request(bytes, int, int, int, bool)");
        return NULL;
    }
    const char *buf = PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t max_bytes = PyLong_AsSsize_t(args[2]);
    Py_ssize_t max_count = PyLong_AsSsize_t(args[3]);
    int underscores_ok = PyObject_IsTrue(args[4]);
    if (PyErr_Occurred())
        return NULL;
    if (!configured || pos < 0 || pos > size)
        Py_RETURN_NONE;
    Py_ssize_t e = size;
    if (e - pos > max_bytes)
        e = pos + max_bytes; /* a head must end within the limit */
    Py_ssize_t p = pos;
    PyObject *method;
    if (e - p > 4 && memcmp(buf + p, "GET ", 4) == 0) {
        method = method_get;
        p += 4;
    } else if (e - p > 5 && memcmp(buf + p, "HEAD ", 5) == 0) {
        method = method_head;
        p += 5;
    } else {
        Py_RETURN_NONE;
    }
    Py_ssize_t u = p;
    if (p >= e || buf[p] != '/')
        Py_RETURN_NONE;
    while (p < e && TARGET[(unsigned char)buf[p]])
        p++;
    Py_ssize_t ulen = p - u;
    if (e - p < 11 || memcmp(buf + p, " HTTP/1.1\r\n", 11) != 0)
        Py_RETURN_NONE;
    p += 11;

    PyObject *headers = PyList_New(0);
    PyObject *specials = PyList_New(0);
    if (headers == NULL || specials == NULL)
        goto fail;
    Py_ssize_t counted = ulen, count = 0;
    int rid = 0, host = 0;
    char lower[MAX_NAME];
    for (;;) {
        Py_ssize_t n, v, vlen;
        int blank;
        Py_ssize_t next = header_line(buf, p, e, lower, &n, &v, &vlen, &blank, underscores_ok);
        if (next == 0)
            goto fallback;
        p = next;
        if (blank)
            break;
        counted += n + vlen + 4;
        if (++count > max_count || counted > max_bytes)
            goto fallback;
        switch (n) { /* names that frame a body or change the exchange: llhttp's */
        case 4:
            if (EQ(lower, n, "host")) {
                /* what add_header would refuse (a repeat, a bad byte) is answered by llhttp's
                 * path, so the fast one cannot fail */
                if (host)
                    goto fallback;
                for (Py_ssize_t i = 0; i < vlen; i++)
                    if (!AUTHORITY[(unsigned char)buf[v + i]])
                        goto fallback;
                host = 1;
            }
            break;
        case 6:
            if (EQ(lower, n, "expect"))
                goto fallback;
            break;
        case 7:
            if (EQ(lower, n, "upgrade"))
                goto fallback;
            break;
        case 10:
            if (EQ(lower, n, "connection") && !eq_nocase(buf + v, vlen, "keep-alive"))
                goto fallback;
            break;
        case 12:
            if (EQ(lower, n, "x-request-id"))
                rid = 1;
            break;
        case 14:
            if (EQ(lower, n, "content-length"))
                goto fallback;
            break;
        case 17:
            if (EQ(lower, n, "transfer-encoding"))
                goto fallback;
            break;
        }
        PyObject *name = name_object(lower, n);
        if (name == NULL)
            goto fail;
        int sp = PySet_Contains(special_request, name);
        if (sp < 0) {
            Py_DECREF(name);
            goto fail;
        }
        if (append_pair(sp ? specials : headers, name, buf + v, vlen) == NULL)
            goto fail;
    }
    if (!host)
        goto fallback; /* 400: llhttp's path answers it */
    PyObject *url = PyBytes_FromStringAndSize(buf + u, ulen);
    if (url == NULL)
        goto fail;
    PyObject *end = PyLong_FromSsize_t(p), *result = PyTuple_New(6);
    if (end == NULL || result == NULL) {
        Py_XDECREF(end);
        Py_XDECREF(result);
        Py_DECREF(url);
        goto fail;
    }
    Py_INCREF(method);
    PyObject *seen = rid ? Py_True : Py_False;
    Py_INCREF(seen);
    PyTuple_SET_ITEM(result, 0, end); /* the tuple owns them all from here */
    PyTuple_SET_ITEM(result, 1, method);
    PyTuple_SET_ITEM(result, 2, url);
    PyTuple_SET_ITEM(result, 3, headers);
    PyTuple_SET_ITEM(result, 4, specials);
    PyTuple_SET_ITEM(result, 5, seen);
    return result;
fallback:
    Py_DECREF(headers);
    Py_DECREF(specials);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(headers);
    Py_XDECREF(specials);
    return NULL;
}

/* "name: value\r\n" for each (name, value) pair of a list of bytes pairs: what
 * codec.encode.header_block makes, in one allocation. */
static PyObject *
header_block(PyObject *headers)
{
    Py_ssize_t n = PyList_GET_SIZE(headers), size = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyList_GET_ITEM(headers, i);
        size += PyBytes_GET_SIZE(PyTuple_GET_ITEM(t, 0)) + PyBytes_GET_SIZE(PyTuple_GET_ITEM(t, 1));
    }
    PyObject *block = PyBytes_FromStringAndSize(NULL, size + 4 * n);
    if (block == NULL)
        return NULL;
    char *o = PyBytes_AS_STRING(block);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyList_GET_ITEM(headers, i);
        PyObject *k = PyTuple_GET_ITEM(t, 0), *v = PyTuple_GET_ITEM(t, 1);
        memcpy(o, PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k));
        o += PyBytes_GET_SIZE(k);
        *o++ = ':';
        *o++ = ' ';
        memcpy(o, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
        o += PyBytes_GET_SIZE(v);
        *o++ = '\r';
        *o++ = '\n';
    }
    return block;
}

/* scan_response(data, max_bytes)
 *   -> (end, status, headers, content_length, keep_alive, block) or None
 *
 * An HTTP/1.1 final response (200-599 but 204 and 304) framed by one Content-Length, with no
 * Transfer-Encoding, and Connection absent, "keep-alive" or "close". headers are the pairs to
 * relay: the hop-by-hop ones and Server are left out, as ResponseDecoder.on_header does; block
 * is them serialized (encode.header_block(headers)). */
static PyObject *
scan_response(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scan_response(bytes, int)");
        return NULL;
    }
    const char *buf = PyBytes_AS_STRING(args[0]);
    Py_ssize_t e = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t max_bytes = PyLong_AsSsize_t(args[1]);
    if (max_bytes == -1 && PyErr_Occurred())
        return NULL;
    if (e > max_bytes)
        e = max_bytes;
    if (e < 17 || memcmp(buf, "HTTP/1.1 ", 9) != 0)
        Py_RETURN_NONE;
    int status = 0;
    for (int i = 9; i < 12; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            Py_RETURN_NONE;
        status = status * 10 + (buf[i] - '0');
    }
    if (status < 200 || status > 599 || status == 204 || status == 304 || buf[12] != ' ')
        Py_RETURN_NONE;
    Py_ssize_t p = 13;
    while (p < e && VALUE[(unsigned char)buf[p]])
        p++;
    if (p + 1 >= e || buf[p] != '\r' || buf[p + 1] != '\n')
        Py_RETURN_NONE;
    p += 2;

    PyObject *headers = PyList_New(0);
    if (headers == NULL)
        return NULL;
    long long content_length = -1;
    int keep_alive = 1;
    char lower[MAX_NAME];
    for (;;) {
        Py_ssize_t n, v, vlen;
        int blank;
        Py_ssize_t next = header_line(buf, p, e, lower, &n, &v, &vlen, &blank, 1);
        if (next == 0)
            goto fallback;
        p = next;
        if (blank)
            break;
        const char *val = buf + v;
        switch (n) { /* framing and hop-by-hop headers, and Server: not relayed */
        case 2:
            if (EQ(lower, n, "te"))
                continue;
            break;
        case 6:
            if (EQ(lower, n, "server"))
                continue;
            break;
        case 7:
            if (EQ(lower, n, "trailer") || EQ(lower, n, "upgrade"))
                continue;
            break;
        case 10:
            if (EQ(lower, n, "keep-alive"))
                continue;
            if (EQ(lower, n, "connection")) {
                if (eq_nocase(val, vlen, "close"))
                    keep_alive = 0;
                else if (!eq_nocase(val, vlen, "keep-alive"))
                    goto fallback; /* other tokens name headers to drop */
                continue;
            }
            break;
        case 14:
            if (EQ(lower, n, "content-length")) {
                if (content_length >= 0 || vlen > 15)
                    goto fallback; /* a repeat: llhttp decides */
                content_length = 0;
                for (Py_ssize_t i = 0; i < vlen; i++) {
                    if (val[i] < '0' || val[i] > '9')
                        goto fallback;
                    content_length = content_length * 10 + (val[i] - '0');
                }
                continue;
            }
            break;
        case 16:
            if (EQ(lower, n, "proxy-connection"))
                continue;
            break;
        case 17:
            if (EQ(lower, n, "transfer-encoding"))
                goto fallback;
            break;
        }
        PyObject *name = name_object(lower, n);
        if (name == NULL || append_pair(headers, name, val, vlen) == NULL) {
            Py_DECREF(headers);
            return NULL;
        }
    }
    if (content_length < 0)
        goto fallback;
    PyObject *block = header_block(headers);
    PyObject *end = PyLong_FromSsize_t(p), *code = PyLong_FromLong(status);
    PyObject *length = PyLong_FromLongLong(content_length), *result = PyTuple_New(6);
    if (block == NULL || end == NULL || code == NULL || length == NULL || result == NULL) {
        Py_XDECREF(block);
        Py_XDECREF(end);
        Py_XDECREF(code);
        Py_XDECREF(length);
        Py_XDECREF(result);
        Py_DECREF(headers);
        return NULL;
    }
    PyObject *keep = keep_alive ? Py_True : Py_False;
    Py_INCREF(keep);
    PyTuple_SET_ITEM(result, 0, end); /* the tuple owns them all from here */
    PyTuple_SET_ITEM(result, 1, code);
    PyTuple_SET_ITEM(result, 2, headers);
    PyTuple_SET_ITEM(result, 3, length);
    PyTuple_SET_ITEM(result, 4, keep);
    PyTuple_SET_ITEM(result, 5, block);
    return result;
fallback:
    Py_DECREF(headers);
    Py_RETURN_NONE;
}

/* header_block(headers): the public form of header_block, for any list of (bytes, bytes)
 * pairs: codec.encode serializes every head with it in the compiled form. */
static PyObject *
header_block_checked(PyObject *self, PyObject *headers)
{
    if (!PyList_CheckExact(headers)) {
        PyErr_SetString(PyExc_TypeError, "header_block(list)");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(headers);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyList_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) != 2 ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(t, 0)) ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(t, 1))) {
            PyErr_SetString(PyExc_TypeError, "header_block: (bytes, bytes) pairs");
            return NULL;
        }
    }
    return header_block(headers);
}

/* configure(special_request_headers, authority_table): the names RequestHead.add_header takes
 * (x-request-id excluded: it is forwarded in place and flagged), and http1.AUTHORITY_TABLE (a
 * Host byte is valid if the table maps it to itself). */
static PyObject *
configure(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyFrozenSet_Check(args[0]) || !PyBytes_Check(args[1]) ||
        PyBytes_GET_SIZE(args[1]) != 256) {
        PyErr_SetString(PyExc_TypeError, "configure(frozenset, bytes of 256)");
        return NULL;
    }
    const unsigned char *table = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    for (int c = 0; c < 256; c++)
        AUTHORITY[c] = table[c] == c;
    Py_INCREF(args[0]);
    Py_XSETREF(special_request, args[0]);
    configured = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scan_request", (PyCFunction)(void (*)(void))scan_request, METH_FASTCALL, NULL},
    {"scan_response", (PyCFunction)(void (*)(void))scan_response, METH_FASTCALL, NULL},
    {"header_block", header_block_checked, METH_O, NULL},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "udsproxy.codec._scan", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    const char *tchar = "!#$%&'*+-.^_`|~";
    for (int c = 0; c < 256; c++) {
        int alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        if (alnum || (c && strchr(tchar, c) != NULL))
            NAME[c] = (unsigned char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
        TARGET[c] = alnum || (c && strchr("-._~!$&'()*+,;=:@%/?", c) != NULL);
        VALUE[c] = (c >= 0x21 && c <= 0x7e) || c == ' ' || c == '\t';
    }
    special_request = PyFrozenSet_New(NULL);
    method_get = PyBytes_FromString("GET");
    method_head = PyBytes_FromString("HEAD");
    if (special_request == NULL || method_get == NULL || method_head == NULL)
        return NULL;
    memset(by_len, -1, sizeof(by_len));
    for (size_t i = 0; i < N_COMMON; i++) {
        size_t n = strlen(COMMON[i]);
        common_obj[i] = PyBytes_FromStringAndSize(COMMON[i], (Py_ssize_t)n);
        if (common_obj[i] == NULL)
            return NULL;
        if (n <= MAX_COMMON_LEN) {
            signed char *slot = by_len[n];
            while (*slot >= 0)
                slot++;
            if (slot - by_len[n] < 7)
                *slot = (signed char)i;
        }
    }
    return PyModule_Create(&module);
}
