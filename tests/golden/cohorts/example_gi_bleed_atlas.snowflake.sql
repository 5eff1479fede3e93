-- gi_bleed_atlas
WITH codesets AS (
  SELECT
    codeset_id,
    concept_id
  FROM (
    SELECT
      0 AS codeset_id,
      c.concept_id
    FROM (
      SELECT DISTINCT
        i_set.concept_id
      FROM (
        SELECT
          concept_id
        FROM vocab.concept
        WHERE
          concept_id IN (192671)
        UNION
        SELECT
          c.concept_id
        FROM vocab.concept AS c
        JOIN vocab.concept_ancestor AS ca
          ON c.concept_id = ca.descendant_concept_id
        WHERE
          c.invalid_reason IS NULL AND ca.ancestor_concept_id IN (192671)
      ) AS i_set
    ) AS c
  ) AS cs
), cohort_primary_events AS (
  SELECT
    P.ordinal AS event_id,
    P.person_id,
    P.start_date,
    P.end_date,
    P.op_start_date,
    P.op_end_date,
    P.visit_occurrence_id
  FROM (
    SELECT
      E.person_id,
      E.start_date,
      E.end_date,
      ROW_NUMBER() OVER (
        PARTITION BY E.person_id
        ORDER BY E.sort_date ASC NULLS FIRST, E.event_id ASC NULLS FIRST, E.criteria_index ASC NULLS FIRST, OP.observation_period_start_date ASC NULLS FIRST
      ) AS ordinal,
      OP.observation_period_start_date AS op_start_date,
      OP.observation_period_end_date AS op_end_date,
      CAST(E.visit_occurrence_id AS BIGINT) AS visit_occurrence_id
    FROM (
      SELECT
        *,
        0 AS criteria_index
      FROM (
        SELECT
          C.person_id,
          C.condition_occurrence_id AS event_id,
          C.start_date,
          C.end_date,
          C.visit_occurrence_id AS visit_occurrence_id,
          C.start_date AS sort_date,
          C.condition_concept_id AS domain_concept_id
        FROM (
          SELECT
            co.*,
            co.condition_start_date AS start_date,
            COALESCE(co.condition_end_date, CAST(DATEADD(DAY, 1, co.condition_start_date) AS DATE)) AS end_date
          FROM cdm.condition_occurrence AS co
          JOIN codesets AS cs
            ON co.condition_concept_id = cs.concept_id AND cs.codeset_id = 0
        ) AS C
      ) AS q
    ) AS E
    JOIN cdm.observation_period AS OP
      ON E.person_id = OP.person_id
      AND E.start_date >= OP.observation_period_start_date
      AND E.start_date <= OP.observation_period_end_date
    WHERE
      OP.observation_period_start_date <= E.start_date
      AND E.start_date <= OP.observation_period_end_date
  ) AS P
), cohort_qualified_events AS (
  SELECT
    QE.person_id,
    QE.event_id,
    QE.start_date,
    QE.end_date,
    QE.op_start_date,
    QE.op_end_date,
    QE.visit_occurrence_id
  FROM (
    SELECT
      pe.person_id,
      pe.event_id,
      pe.start_date,
      pe.end_date,
      pe.op_start_date,
      pe.op_end_date,
      pe.visit_occurrence_id,
      ROW_NUMBER() OVER (
        PARTITION BY pe.person_id
        ORDER BY pe.start_date ASC NULLS FIRST, pe.event_id ASC NULLS FIRST
      ) AS ordinal
    FROM cohort_primary_events AS pe
  ) AS QE
), cohort_inclusion_events AS (
  SELECT
    *
  FROM (
    SELECT
      0 AS inclusion_rule_id,
      1 AS rule_bit,
      g.person_id,
      g.event_id
    FROM (
      SELECT
        0 AS index_id,
        person_id,
        event_id
      FROM (
        SELECT
          0 AS index_id,
          E.person_id,
          E.event_id
        FROM cohort_qualified_events AS E
        JOIN cdm.person AS P
          ON P.person_id = E.person_id
        WHERE
          YEAR(E.start_date) - P.year_of_birth >= 18
        GROUP BY
          E.person_id,
          E.event_id
      ) AS G
    ) AS g
    UNION ALL
    SELECT
      1 AS inclusion_rule_id,
      2 AS rule_bit,
      g.person_id,
      g.event_id
    FROM (
      SELECT
        0 AS index_id,
        person_id,
        event_id
      FROM (
        SELECT
          0 AS index_id,
          p.person_id,
          p.event_id
        FROM cohort_qualified_events AS p
        LEFT JOIN (
          SELECT
            P.person_id,
            P.event_id
          FROM cohort_qualified_events AS P
          JOIN (
            SELECT
              C.person_id,
              C.condition_occurrence_id AS event_id,
              C.start_date,
              C.end_date,
              C.visit_occurrence_id AS visit_occurrence_id,
              C.start_date AS sort_date,
              C.condition_concept_id AS domain_concept_id
            FROM (
              SELECT
                co.*,
                co.condition_start_date AS start_date,
                COALESCE(co.condition_end_date, CAST(DATEADD(DAY, 1, co.condition_start_date) AS DATE)) AS end_date
              FROM cdm.condition_occurrence AS co
              JOIN codesets AS cs
                ON co.condition_concept_id = cs.concept_id AND cs.codeset_id = 0
            ) AS C
          ) AS A
            ON A.person_id = P.person_id
            AND A.start_date >= P.op_start_date
            AND A.start_date <= P.op_end_date
            AND A.start_date >= CAST(DATEADD(DAY, -90, P.start_date) AS DATE)
            AND A.start_date <= CAST(DATEADD(DAY, -1, P.start_date) AS DATE)
        ) AS cc
          ON p.person_id = cc.person_id AND p.event_id = cc.event_id
        GROUP BY
          p.person_id,
          p.event_id
        HAVING
          COUNT(cc.event_id) = 0
      ) AS G
    ) AS g
  ) AS ir
), cohort_masked_events AS (
  SELECT
    Q.person_id,
    Q.event_id,
    Q.start_date,
    Q.end_date,
    Q.op_start_date,
    Q.op_end_date,
    COALESCE(I.inclusion_rule_mask, 0) AS inclusion_rule_mask,
    COALESCE(I.rule_count, 0) AS rule_count,
    COALESCE(I.min_rule_id, 0) AS min_rule_id
  FROM cohort_qualified_events AS Q
  LEFT JOIN (
    SELECT
      IE.person_id,
      IE.event_id,
      SUM(IE.rule_bit) AS inclusion_rule_mask,
      COUNT(DISTINCT IE.inclusion_rule_id) AS rule_count,
      MIN(IE.inclusion_rule_id) AS min_rule_id
    FROM cohort_inclusion_events AS IE
    GROUP BY
      IE.person_id,
      IE.event_id
  ) AS I
    ON I.person_id = Q.person_id AND I.event_id = Q.event_id
), cohort_included_events AS (
  SELECT
    R.person_id,
    R.event_id,
    R.start_date,
    R.end_date,
    R.op_start_date,
    R.op_end_date
  FROM (
    SELECT
      MG.person_id,
      MG.event_id,
      MG.start_date,
      MG.end_date,
      MG.op_start_date,
      MG.op_end_date,
      ROW_NUMBER() OVER (
        PARTITION BY MG.person_id
        ORDER BY MG.start_date ASC NULLS FIRST, MG.event_id ASC NULLS FIRST
      ) AS ordinal
    FROM cohort_masked_events AS MG
    WHERE
      MG.inclusion_rule_mask = 3
  ) AS R
), cohort_rows AS (
  SELECT
    I.person_id,
    I.start_date,
    CASE
      WHEN CAST(DATEADD(DAY, 7, I.start_date) AS DATE) > I.op_end_date
      THEN I.op_end_date
      ELSE CAST(DATEADD(DAY, 7, I.start_date) AS DATE)
    END AS end_date
  FROM cohort_included_events AS I
  WHERE
    CASE
      WHEN CAST(DATEADD(DAY, 7, I.start_date) AS DATE) > I.op_end_date
      THEN I.op_end_date
      ELSE CAST(DATEADD(DAY, 7, I.start_date) AS DATE)
    END >= I.start_date
), era_rows_7 AS (
  SELECT
    S.person_id,
    S.start_date,
    S.end_date,
    COUNT(*) OVER (PARTITION BY S.person_id) AS n_rows
  FROM cohort_rows AS S
), cohort_final AS (
  SELECT
    *
  FROM (
    SELECT
      person_id,
      start_date,
      end_date
    FROM era_rows_7
    WHERE
      n_rows = 1
    UNION ALL
    SELECT
      person_id,
      MIN(start_date) AS start_date,
      MAX(end_date) AS end_date
    FROM (
      SELECT
        person_id,
        start_date,
        end_date,
        SUM(is_start) OVER (
          PARTITION BY person_id
          ORDER BY start_date NULLS FIRST, is_start DESC NULLS LAST, end_date NULLS FIRST
          ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS group_idx
      FROM (
        SELECT
          person_id,
          start_date,
          end_date,
          CASE
            WHEN MAX(end_date) OVER (
              PARTITION BY person_id
              ORDER BY start_date NULLS FIRST, end_date NULLS FIRST
              ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
            ) >= start_date
            THEN 0
            ELSE 1
          END AS is_start
        FROM (
          SELECT
            person_id,
            start_date,
            end_date AS end_date
          FROM (
            SELECT
              person_id,
              start_date,
              end_date
            FROM era_rows_7
            WHERE
              n_rows > 1
          ) AS R
        ) AS CR
      ) AS ST
    ) AS GR
    GROUP BY
      person_id,
      group_idx
  ) AS EU
), cohort_out AS (
  SELECT
    person_id AS subject_id,
    start_date AS cohort_start_date,
    end_date AS cohort_end_date
  FROM cohort_final
), cohort_mask_counts AS (
  SELECT
    *
  FROM (
    SELECT
      0 AS mode_id,
      inclusion_rule_mask,
      COUNT(*) AS person_count
    FROM cohort_masked_events
    GROUP BY
      inclusion_rule_mask
    UNION ALL
    SELECT
      1 AS mode_id,
      inclusion_rule_mask,
      COUNT(*) AS person_count
    FROM (
      SELECT
        inclusion_rule_mask,
        ROW_NUMBER() OVER (
          PARTITION BY person_id
          ORDER BY rule_count DESC NULLS LAST, min_rule_id ASC NULLS FIRST, start_date ASC NULLS FIRST, event_id ASC NULLS FIRST
        ) AS rank_value
      FROM cohort_masked_events
    ) AS B
    WHERE
      B.rank_value = 1
    GROUP BY
      inclusion_rule_mask
  ) AS mc
)
SELECT
  subject_id,
  cohort_start_date,
  cohort_end_date
FROM cohort_out
