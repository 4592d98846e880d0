/*
 * exprcalc.c: evaluates the integer expressions given as arguments, one per argument, left to right.
 *
 *   NAME=EXPR assigns a variable; EXPR prints its value. Operators: + - * / % ^ (power, right
 *   associative), unary -, parentheses, and calls: min(a,b) max(a,b) abs(a) gcd(a,b) fib(n) pow(a,b)
 *   even(n) odd(n) sum(a,...). Arguments that start with "--" are options: --sorted prints the
 *   results sorted at the end, --vars prints the variables sorted by name, --tree prints each syntax
 *   tree in prefix form.
 *
 * Written for c2rust-batch as a function-level translation example: a syntax tree of linked nodes
 * whose payload is a union, a token struct nested in the lexer, enums, typedefs, globals, macros,
 * static helpers, a recursive-descent parser (mutual recursion), even/odd (mutual recursion), and
 * qsort over results and variables with comparator function pointers.
 */
#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_IDENT 16
#define MAX_CALL_ARGS 6
#define MAX_DEPTH 64
#define MAX_RESULTS 32
#define FIB_LIMIT 90
#define IS_IDENT_START(c) (isalpha((unsigned char)(c)) || (c) == '_')
#define IS_IDENT_CHAR(c) (isalnum((unsigned char)(c)) || (c) == '_')

typedef long long number_t;

typedef enum {
    TOK_NUMBER,
    TOK_IDENT,
    TOK_OP,
    TOK_LPAREN,
    TOK_RPAREN,
    TOK_COMMA,
    TOK_ASSIGN,
    TOK_END,
    TOK_BAD
} TokenKind;

typedef struct {
    TokenKind kind;
    int offset;
    union {
        number_t number;
        char ident[MAX_IDENT];
        char op;
    } as;
} Token;

typedef struct {
    const char *src;
    int pos;
    Token current;
} Lexer;

typedef enum { NODE_NUM, NODE_VAR, NODE_NEG, NODE_BINARY, NODE_CALL } NodeKind;

typedef struct Node {
    NodeKind kind;
    union {
        number_t number;
        char name[MAX_IDENT];
        struct Node *operand;
        struct {
            char op;
            struct Node *lhs;
            struct Node *rhs;
        } binary;
        struct {
            int builtin;
            int count;
            struct Node *args[MAX_CALL_ARGS];
        } call;
    } as;
} Node;

typedef struct Var {
    char name[MAX_IDENT];
    number_t value;
    struct Var *next;
} Var;

typedef enum { EVAL_OK, EVAL_DIV_ZERO, EVAL_OVERFLOW, EVAL_UNKNOWN_VAR, EVAL_DOMAIN } EvalStatus;

typedef number_t (*builtin_fn)(const number_t *args, int count, EvalStatus *status);

typedef struct {
    const char *name;
    int min_args;
    int max_args;
    builtin_fn fn;
} Builtin;

typedef struct {
    const char *parse_error;
    int error_offset;
    int depth;
} ParseState;

static Var *g_vars = NULL;
static int g_nodes_alive = 0;
long g_evaluations = 0;
static number_t g_results[MAX_RESULTS];
static int g_result_count = 0;

/* ---- arithmetic helpers ---- */

static int checked_add(number_t a, number_t b, number_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

static int checked_mul(number_t a, number_t b, number_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}

static number_t gcd_of(number_t a, number_t b) {
    if (b == 0) {
        return a < 0 ? -a : a;
    }
    return gcd_of(b, a % b);
}

static int is_odd(number_t n);

static int is_even(number_t n) {
    if (n == 0) {
        return 1;
    }
    return is_odd(n - 1);
}

static int is_odd(number_t n) {
    if (n == 0) {
        return 0;
    }
    return is_even(n - 1);
}

static number_t fib_of(int n) {
    number_t a = 0;
    number_t b = 1;
    for (int i = 0; i < n; i++) {
        number_t next = a + b;
        a = b;
        b = next;
    }
    return a;
}

static number_t power_of(number_t base, number_t exponent, EvalStatus *status) {
    if (exponent < 0) {
        *status = EVAL_DOMAIN;
        return 0;
    }
    if (exponent == 0) {
        return 1;
    }
    number_t half = power_of(base, exponent / 2, status);
    number_t result;
    if (*status != EVAL_OK || !checked_mul(half, half, &result)) {
        *status = *status != EVAL_OK ? *status : EVAL_OVERFLOW;
        return 0;
    }
    if (exponent % 2 == 1 && !checked_mul(result, base, &result)) {
        *status = EVAL_OVERFLOW;
        return 0;
    }
    return result;
}

/* ---- builtins, called through a table of function pointers ---- */

static number_t bi_min(const number_t *args, int count, EvalStatus *status) {
    (void)count;
    (void)status;
    return args[0] < args[1] ? args[0] : args[1];
}

static number_t bi_max(const number_t *args, int count, EvalStatus *status) {
    (void)count;
    (void)status;
    return args[0] > args[1] ? args[0] : args[1];
}

static number_t bi_abs(const number_t *args, int count, EvalStatus *status) {
    (void)count;
    if (args[0] == LLONG_MIN) {
        *status = EVAL_OVERFLOW;
        return 0;
    }
    return args[0] < 0 ? -args[0] : args[0];
}

static number_t bi_gcd(const number_t *args, int count, EvalStatus *status) {
    (void)count;
    if (args[0] == LLONG_MIN || args[1] == LLONG_MIN) {
        *status = EVAL_OVERFLOW;
        return 0;
    }
    return gcd_of(args[0], args[1]);
}

static number_t bi_fib(const number_t *args, int count, EvalStatus *status) {
    (void)count;
    if (args[0] < 0 || args[0] > FIB_LIMIT) {
        *status = EVAL_DOMAIN;
        return 0;
    }
    return fib_of((int)args[0]);
}

static number_t bi_pow(const number_t *args, int count, EvalStatus *status) {
    (void)count;
    return power_of(args[0], args[1], status);
}

static number_t bi_even(const number_t *args, int count, EvalStatus *status) {
    (void)count;
    if (args[0] < 0 || args[0] > 10000) {
        *status = EVAL_DOMAIN;
        return 0;
    }
    return is_even(args[0]);
}

static number_t bi_odd(const number_t *args, int count, EvalStatus *status) {
    (void)count;
    if (args[0] < 0 || args[0] > 10000) {
        *status = EVAL_DOMAIN;
        return 0;
    }
    return is_odd(args[0]);
}

static number_t bi_sum(const number_t *args, int count, EvalStatus *status) {
    number_t total = 0;
    for (int i = 0; i < count; i++) {
        if (!checked_add(total, args[i], &total)) {
            *status = EVAL_OVERFLOW;
            return 0;
        }
    }
    return total;
}

static const Builtin BUILTINS[] = {
    {"min", 2, 2, bi_min},   {"max", 2, 2, bi_max},   {"abs", 1, 1, bi_abs},
    {"gcd", 2, 2, bi_gcd},   {"fib", 1, 1, bi_fib},   {"pow", 2, 2, bi_pow},
    {"even", 1, 1, bi_even}, {"odd", 1, 1, bi_odd},   {"sum", 1, MAX_CALL_ARGS, bi_sum},
};
#define BUILTIN_COUNT ((int)(sizeof(BUILTINS) / sizeof(BUILTINS[0])))

static int find_builtin(const char *name) {
    for (int i = 0; i < BUILTIN_COUNT; i++) {
        if (strcmp(BUILTINS[i].name, name) == 0) {
            return i;
        }
    }
    return -1;
}

/* ---- lexer ---- */

static void lex_next(Lexer *lx) {
    const char *s = lx->src;
    while (s[lx->pos] == ' ') {
        lx->pos++;
    }
    Token *t = &lx->current;
    t->offset = lx->pos;
    char c = s[lx->pos];
    if (c == '\0') {
        t->kind = TOK_END;
        return;
    }
    if (isdigit((unsigned char)c)) {
        number_t value = 0;
        while (isdigit((unsigned char)s[lx->pos])) {
            if (!checked_mul(value, 10, &value) || !checked_add(value, s[lx->pos] - '0', &value)) {
                t->kind = TOK_BAD;
                return;
            }
            lx->pos++;
        }
        t->kind = TOK_NUMBER;
        t->as.number = value;
        return;
    }
    if (IS_IDENT_START(c)) {
        int len = 0;
        while (IS_IDENT_CHAR(s[lx->pos])) {
            if (len < MAX_IDENT - 1) {
                t->as.ident[len++] = s[lx->pos];
            }
            lx->pos++;
        }
        t->as.ident[len] = '\0';
        t->kind = TOK_IDENT;
        return;
    }
    lx->pos++;
    switch (c) {
    case '(': t->kind = TOK_LPAREN; break;
    case ')': t->kind = TOK_RPAREN; break;
    case ',': t->kind = TOK_COMMA; break;
    case '=': t->kind = TOK_ASSIGN; break;
    case '+': case '-': case '*': case '/': case '%': case '^':
        t->kind = TOK_OP;
        t->as.op = c;
        break;
    default:
        t->kind = TOK_BAD;
        break;
    }
}

/* ---- syntax tree ---- */

static Node *node_new(NodeKind kind) {
    Node *node = calloc(1, sizeof *node);
    if (node == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(3);
    }
    node->kind = kind;
    g_nodes_alive++;
    return node;
}

static void node_free(Node *node) {
    if (node == NULL) {
        return;
    }
    switch (node->kind) {
    case NODE_NEG:
        node_free(node->as.operand);
        break;
    case NODE_BINARY:
        node_free(node->as.binary.lhs);
        node_free(node->as.binary.rhs);
        break;
    case NODE_CALL:
        for (int i = 0; i < node->as.call.count; i++) {
            node_free(node->as.call.args[i]);
        }
        break;
    default:
        break;
    }
    g_nodes_alive--;
    free(node);
}

static void node_print(const Node *node) {
    switch (node->kind) {
    case NODE_NUM:
        printf("%lld", node->as.number);
        break;
    case NODE_VAR:
        printf("%s", node->as.name);
        break;
    case NODE_NEG:
        printf("(neg ");
        node_print(node->as.operand);
        printf(")");
        break;
    case NODE_BINARY:
        printf("(%c ", node->as.binary.op);
        node_print(node->as.binary.lhs);
        printf(" ");
        node_print(node->as.binary.rhs);
        printf(")");
        break;
    case NODE_CALL:
        printf("(%s", BUILTINS[node->as.call.builtin].name);
        for (int i = 0; i < node->as.call.count; i++) {
            printf(" ");
            node_print(node->as.call.args[i]);
        }
        printf(")");
        break;
    }
}

/* ---- parser: expr -> term -> unary -> power -> primary -> expr ---- */

static Node *parse_expr(Lexer *lx, ParseState *ps);

static Node *fail(ParseState *ps, const char *message, int offset) {
    if (ps->parse_error == NULL) {
        ps->parse_error = message;
        ps->error_offset = offset;
    }
    return NULL;
}

static Node *parse_call(Lexer *lx, ParseState *ps, const char *name, int offset) {
    int index = find_builtin(name);
    if (index < 0) {
        return fail(ps, "unknown function", offset);
    }
    Node *call = node_new(NODE_CALL);
    call->as.call.builtin = index;
    lex_next(lx);
    if (lx->current.kind != TOK_RPAREN) {
        for (;;) {
            if (call->as.call.count == MAX_CALL_ARGS) {
                node_free(call);
                return fail(ps, "too many arguments", lx->current.offset);
            }
            Node *arg = parse_expr(lx, ps);
            if (arg == NULL) {
                node_free(call);
                return NULL;
            }
            call->as.call.args[call->as.call.count++] = arg;
            if (lx->current.kind != TOK_COMMA) {
                break;
            }
            lex_next(lx);
        }
    }
    if (lx->current.kind != TOK_RPAREN) {
        node_free(call);
        return fail(ps, "expected ')'", lx->current.offset);
    }
    lex_next(lx);
    const Builtin *b = &BUILTINS[index];
    if (call->as.call.count < b->min_args || call->as.call.count > b->max_args) {
        node_free(call);
        return fail(ps, "wrong number of arguments", offset);
    }
    return call;
}

static Node *parse_primary(Lexer *lx, ParseState *ps) {
    Token t = lx->current;
    if (t.kind == TOK_NUMBER) {
        Node *node = node_new(NODE_NUM);
        node->as.number = t.as.number;
        lex_next(lx);
        return node;
    }
    if (t.kind == TOK_IDENT) {
        lex_next(lx);
        if (lx->current.kind == TOK_LPAREN) {
            return parse_call(lx, ps, t.as.ident, t.offset);
        }
        Node *node = node_new(NODE_VAR);
        strcpy(node->as.name, t.as.ident);
        return node;
    }
    if (t.kind == TOK_LPAREN) {
        lex_next(lx);
        Node *inner = parse_expr(lx, ps);
        if (inner == NULL) {
            return NULL;
        }
        if (lx->current.kind != TOK_RPAREN) {
            node_free(inner);
            return fail(ps, "expected ')'", lx->current.offset);
        }
        lex_next(lx);
        return inner;
    }
    return fail(ps, t.kind == TOK_END ? "unexpected end" : "unexpected token", t.offset);
}

static Node *make_binary(char op, Node *lhs, Node *rhs) {
    Node *node = node_new(NODE_BINARY);
    node->as.binary.op = op;
    node->as.binary.lhs = lhs;
    node->as.binary.rhs = rhs;
    return node;
}

static Node *parse_unary(Lexer *lx, ParseState *ps);

static Node *parse_power(Lexer *lx, ParseState *ps) {
    Node *base = parse_primary(lx, ps);
    if (base == NULL) {
        return NULL;
    }
    if (lx->current.kind == TOK_OP && lx->current.as.op == '^') {
        lex_next(lx);
        Node *exponent = parse_unary(lx, ps);
        if (exponent == NULL) {
            node_free(base);
            return NULL;
        }
        return make_binary('^', base, exponent);
    }
    return base;
}

static Node *parse_unary(Lexer *lx, ParseState *ps) {
    if (lx->current.kind == TOK_OP && lx->current.as.op == '-') {
        if (++ps->depth > MAX_DEPTH) {
            return fail(ps, "too deeply nested", lx->current.offset);
        }
        lex_next(lx);
        Node *operand = parse_unary(lx, ps);
        ps->depth--;
        if (operand == NULL) {
            return NULL;
        }
        Node *node = node_new(NODE_NEG);
        node->as.operand = operand;
        return node;
    }
    return parse_power(lx, ps);
}

static Node *parse_term(Lexer *lx, ParseState *ps) {
    Node *lhs = parse_unary(lx, ps);
    while (lhs != NULL && lx->current.kind == TOK_OP && strchr("*/%", lx->current.as.op) != NULL) {
        char op = lx->current.as.op;
        lex_next(lx);
        Node *rhs = parse_unary(lx, ps);
        if (rhs == NULL) {
            node_free(lhs);
            return NULL;
        }
        lhs = make_binary(op, lhs, rhs);
    }
    return lhs;
}

static Node *parse_expr(Lexer *lx, ParseState *ps) {
    if (++ps->depth > MAX_DEPTH) {
        return fail(ps, "too deeply nested", lx->current.offset);
    }
    Node *lhs = parse_term(lx, ps);
    while (lhs != NULL && lx->current.kind == TOK_OP &&
           (lx->current.as.op == '+' || lx->current.as.op == '-')) {
        char op = lx->current.as.op;
        lex_next(lx);
        Node *rhs = parse_term(lx, ps);
        if (rhs == NULL) {
            node_free(lhs);
            lhs = NULL;
            break;
        }
        lhs = make_binary(op, lhs, rhs);
    }
    ps->depth--;
    return lhs;
}

/* ---- variables: a linked list, newest first ---- */

static Var *var_find(const char *name) {
    for (Var *v = g_vars; v != NULL; v = v->next) {
        if (strcmp(v->name, name) == 0) {
            return v;
        }
    }
    return NULL;
}

static void var_set(const char *name, number_t value) {
    Var *v = var_find(name);
    if (v == NULL) {
        v = malloc(sizeof *v);
        if (v == NULL) {
            exit(3);
        }
        snprintf(v->name, sizeof v->name, "%s", name);
        v->next = g_vars;
        g_vars = v;
    }
    v->value = value;
}

/* ---- evaluation (self-recursive) ---- */

static number_t eval(const Node *node, EvalStatus *status) {
    g_evaluations++;
    if (*status != EVAL_OK) {
        return 0;
    }
    switch (node->kind) {
    case NODE_NUM:
        return node->as.number;
    case NODE_VAR: {
        const Var *v = var_find(node->as.name);
        if (v == NULL) {
            *status = EVAL_UNKNOWN_VAR;
            return 0;
        }
        return v->value;
    }
    case NODE_NEG: {
        number_t value = eval(node->as.operand, status);
        if (value == LLONG_MIN) {
            *status = EVAL_OVERFLOW;
            return 0;
        }
        return -value;
    }
    case NODE_CALL: {
        number_t args[MAX_CALL_ARGS];
        for (int i = 0; i < node->as.call.count; i++) {
            args[i] = eval(node->as.call.args[i], status);
        }
        if (*status != EVAL_OK) {
            return 0;
        }
        return BUILTINS[node->as.call.builtin].fn(args, node->as.call.count, status);
    }
    case NODE_BINARY:
        break;
    }
    number_t a = eval(node->as.binary.lhs, status);
    number_t b = eval(node->as.binary.rhs, status);
    number_t out = 0;
    if (*status != EVAL_OK) {
        return 0;
    }
    switch (node->as.binary.op) {
    case '+':
        if (!checked_add(a, b, &out)) *status = EVAL_OVERFLOW;
        return out;
    case '-':
        if (__builtin_sub_overflow(a, b, &out)) *status = EVAL_OVERFLOW;
        return out;
    case '*':
        if (!checked_mul(a, b, &out)) *status = EVAL_OVERFLOW;
        return out;
    case '/':
    case '%':
        if (b == 0) {
            *status = EVAL_DIV_ZERO;
            return 0;
        }
        if (a == LLONG_MIN && b == -1) {
            *status = EVAL_OVERFLOW;
            return 0;
        }
        return node->as.binary.op == '/' ? a / b : a % b;
    default:
        return power_of(a, b, status);
    }
}

static const char *status_text(EvalStatus status) {
    switch (status) {
    case EVAL_DIV_ZERO: return "division by zero";
    case EVAL_OVERFLOW: return "overflow";
    case EVAL_UNKNOWN_VAR: return "unknown variable";
    case EVAL_DOMAIN: return "argument out of range";
    default: return "ok";
    }
}

/* ---- one argument ---- */

static int run_statement(const char *text, int show_tree) {
    Lexer lx = {text, 0, {TOK_END, 0, {0}}};
    ParseState ps = {NULL, 0, 0};
    char target[MAX_IDENT] = "";
    lex_next(&lx);
    if (lx.current.kind == TOK_IDENT) {
        Lexer peek = lx;
        lex_next(&peek);
        if (peek.current.kind == TOK_ASSIGN) {
            strcpy(target, lx.current.as.ident);
            lx = peek;
            lex_next(&lx);
        }
    }
    Node *tree = parse_expr(&lx, &ps);
    if (tree != NULL && lx.current.kind != TOK_END) {
        node_free(tree);
        tree = fail(&ps, "unexpected token", lx.current.offset);
    }
    if (tree == NULL) {
        printf("%s: error: %s at %d\n", text, ps.parse_error, ps.error_offset + 1);
        return 0;
    }
    if (show_tree) {
        node_print(tree);
        printf("\n");
    }
    EvalStatus status = EVAL_OK;
    number_t value = eval(tree, &status);
    node_free(tree);
    if (status != EVAL_OK) {
        printf("%s: error: %s\n", text, status_text(status));
        return 0;
    }
    if (target[0] != '\0') {
        var_set(target, value);
        printf("%s = %lld\n", target, value);
    } else {
        printf("%lld\n", value);
    }
    if (g_result_count < MAX_RESULTS) {
        g_results[g_result_count++] = value;
    }
    return 1;
}

/* ---- sorted listings ---- */

static int cmp_numbers(const void *a, const void *b) {
    number_t x = *(const number_t *)a;
    number_t y = *(const number_t *)b;
    return (x > y) - (x < y);
}

static int cmp_vars(const void *a, const void *b) {
    const Var *x = *(const Var *const *)a;
    const Var *y = *(const Var *const *)b;
    return strcmp(x->name, y->name);
}

static void print_vars(void) {
    int count = 0;
    for (Var *v = g_vars; v != NULL; v = v->next) {
        count++;
    }
    if (count == 0) {
        printf("no variables\n");
        return;
    }
    Var **all = malloc(sizeof(Var *) * (size_t)count);
    if (all == NULL) {
        exit(3);
    }
    int i = 0;
    for (Var *v = g_vars; v != NULL; v = v->next) {
        all[i++] = v;
    }
    qsort(all, (size_t)count, sizeof(Var *), cmp_vars);
    for (i = 0; i < count; i++) {
        printf("%s=%lld%s", all[i]->name, all[i]->value, i + 1 < count ? " " : "\n");
    }
    free(all);
}

static void print_sorted_results(void) {
    qsort(g_results, (size_t)g_result_count, sizeof(number_t), cmp_numbers);
    printf("sorted:");
    for (int i = 0; i < g_result_count; i++) {
        printf(" %lld", g_results[i]);
    }
    printf("\n");
}

int main(int argc, char **argv) {
    int sorted = 0;
    int vars = 0;
    int trees = 0;
    int failures = 0;
    int statements = 0;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--", 2) != 0) {
            continue;
        }
        if (strcmp(argv[i], "--sorted") == 0) {
            sorted = 1;
        } else if (strcmp(argv[i], "--vars") == 0) {
            vars = 1;
        } else if (strcmp(argv[i], "--tree") == 0) {
            trees = 1;
        } else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--", 2) == 0) {
            continue;
        }
        statements++;
        if (!run_statement(argv[i], trees)) {
            failures++;
        }
    }
    if (statements == 0) {
        fprintf(stderr, "usage: exprcalc [--sorted] [--vars] [--tree] EXPR...\n");
        return 2;
    }
    if (sorted) {
        print_sorted_results();
    }
    if (vars) {
        print_vars();
    }
    while (g_vars != NULL) {
        Var *next = g_vars->next;
        free(g_vars);
        g_vars = next;
    }
    if (g_nodes_alive != 0) {
        fprintf(stderr, "leak: %d nodes\n", g_nodes_alive);
        return 4;
    }
    return failures > 0 ? 1 : 0;
}
